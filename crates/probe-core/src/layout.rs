//! The kernel map keys and values of `bpf/probe.h`, as `#[repr(C)]` mirrors of the types the
//! libbpf skeleton generates from it. The probe builds the skeleton (with clang); this crate
//! does not, so that the code that fills the maps can be tested and fuzzed anywhere.
//! `meshlogic-probe` asserts at compile time that every size, alignment, field offset, limit
//! and flag here equals the generated one (`kernel/skel.rs`).

/// `PATH_LEN`: bytes of a path in an event and in a mute path key, its NUL included.
pub const PATH_LEN: usize = 256;
/// `EXEC_KEY_PATH`: bytes of an executable path in a deny_exec key.
pub const EXEC_KEY_PATH: usize = 240;
/// `MAX_PORTS`: ports of one net_rule.
pub const MAX_PORTS: usize = 16;

/// `enum pod_flag`: the flags of a pod cgroup in the pod_cgroups map.
pub const POD_WATCHED: u32 = 1;
pub const POD_ENFORCED: u32 = 2;
pub const POD_QUARANTINED: u32 = 4;
pub const POD_EXEC_DENIED: u32 = 8;

/// `enum exec_file_kind`: the value of a deny_exec_file entry.
pub const EXEC_FILE_DENIED: u8 = 1;
pub const EXEC_FILE_LOADER: u8 = 2;

/// `struct path_key`: a mute_paths trie key.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PathKey {
    pub prefixlen: u32,
    pub path: [u8; PATH_LEN],
}

/// `struct exec_key`: a deny_exec trie key, the pod cgroup id (native order) then the path.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ExecKey {
    pub prefixlen: u32,
    pub pod: [u8; 8],
    pub path: [u8; EXEC_KEY_PATH],
}

/// `struct exec_file_key`: a deny_exec_file key, a file of a pod by the kernel's names for it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecFileKey {
    pub pod: u64,
    pub ino: u64,
    /// The kernel's dev_t (`major << 20 | minor`), not the one stat(2) returns.
    pub dev: u32,
    pub pad: u32,
}

/// `struct net4_key`: a deny_net4 trie key.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Net4Key {
    pub prefixlen: u32,
    pub pod: [u8; 8],
    pub addr: [u8; 4],
}

/// `struct net6_key`: a deny_net6 trie key.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Net6Key {
    pub prefixlen: u32,
    pub pod: [u8; 8],
    pub addr: [u8; 16],
}

/// `struct net_rule`: the value of a denied network, its ports (`nports` 0: every port).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NetRule {
    pub nports: u32,
    pub ports: [u16; MAX_PORTS],
}

/// `struct dest_key`: an allowed_dest key.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DestKey {
    pub pod: u64,
    pub addr: [u8; 16],
    pub family: u32,
    pub port: u32,
}

impl Default for PathKey {
    fn default() -> Self {
        Self {
            prefixlen: 0,
            path: [0; PATH_LEN],
        }
    }
}

impl Default for ExecKey {
    fn default() -> Self {
        Self {
            prefixlen: 0,
            pod: [0; 8],
            path: [0; EXEC_KEY_PATH],
        }
    }
}

// SAFETY: repr(C) structs of integers and byte arrays, every bit pattern a valid value, and no
// padding (asserted below): every byte of a value is initialised.
unsafe impl plain::Plain for PathKey {}
unsafe impl plain::Plain for ExecKey {}
unsafe impl plain::Plain for ExecFileKey {}
unsafe impl plain::Plain for Net4Key {}
unsafe impl plain::Plain for Net6Key {}
unsafe impl plain::Plain for NetRule {}
unsafe impl plain::Plain for DestKey {}

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<PathKey>() == 4 + PATH_LEN);
    assert!(size_of::<ExecKey>() == 4 + 8 + EXEC_KEY_PATH);
    assert!(size_of::<ExecFileKey>() == 8 + 8 + 4 + 4);
    assert!(size_of::<Net4Key>() == 4 + 8 + 4);
    assert!(size_of::<Net6Key>() == 4 + 8 + 16);
    assert!(size_of::<NetRule>() == 4 + 2 * MAX_PORTS);
    assert!(size_of::<DestKey>() == 8 + 16 + 4 + 4);
};

/// The bytes of a key or value, as libbpf takes them.
pub(crate) fn bytes_of<T: plain::Plain>(value: &T) -> Vec<u8> {
    // SAFETY: the types of this module have no padding: every byte is initialised.
    unsafe { plain::as_bytes(value) }.to_vec()
}
