//! The canonical byte encoding that signatures and hashes cover: a domain-separation prefix,
//! then each field length-prefixed (u32 big-endian), so that no two different field lists
//! encode to the same bytes.

pub(crate) struct Transcript {
    bytes: Vec<u8>,
}

impl Transcript {
    pub(crate) fn new(domain: &str) -> Self {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(domain.as_bytes());
        bytes.push(0);
        Self { bytes }
    }

    pub(crate) fn field(mut self, value: &[u8]) -> Self {
        // Fields are bounded far below 4 GiB by every decoder of this crate.
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(value);
        self
    }

    pub(crate) fn str(self, value: &str) -> Self {
        self.field(value.as_bytes())
    }

    pub(crate) fn i64(self, value: i64) -> Self {
        self.field(&value.to_be_bytes())
    }

    pub(crate) fn u64(self, value: u64) -> Self {
        self.field(&value.to_be_bytes())
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
