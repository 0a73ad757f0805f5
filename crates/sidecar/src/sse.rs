//! Server-Sent Events, read incrementally and written back byte for byte: the proxy splits an
//! upstream stream into whole events (comments, `id:`, `retry:` and unknown fields kept as
//! sent) and only rebuilds an event whose `data` it must change.

use bytes::{Bytes, BytesMut};

/// Largest event held while waiting for its end; a longer one fails the stream (a list is
/// never silently passed unfiltered).
pub const MAX_EVENT: usize = 16 << 20;

/// One event as received: its raw bytes (terminating blank line included) and its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub raw: Bytes,
    /// `event:` field (`None`: the default type, `message`).
    pub kind: Option<String>,
    /// The `data:` lines joined by `\n`, when there are any.
    pub data: Option<String>,
}

impl Event {
    /// The same event with other data: every line but the `data:` ones kept in order, the new
    /// data written where the first `data:` line was.
    pub fn with_data(&self, data: &str) -> Bytes {
        let text = String::from_utf8_lossy(&self.raw);
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let mut out = String::with_capacity(text.len() + data.len());
        let mut written = false;
        for line in lines(&text) {
            if line.is_empty() {
                continue;
            }
            if field_name(line) == "data" {
                if !written {
                    for part in data.split('\n') {
                        out.push_str("data: ");
                        out.push_str(part);
                        out.push_str(newline);
                    }
                    written = true;
                }
                continue;
            }
            out.push_str(line);
            out.push_str(newline);
        }
        if !written {
            for part in data.split('\n') {
                out.push_str("data: ");
                out.push_str(part);
                out.push_str(newline);
            }
        }
        out.push_str(newline);
        Bytes::from(out)
    }
}

/// A `message` event carrying `data`.
pub fn message_event(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 24);
    out.push_str("event: message\n");
    for part in data.split('\n') {
        out.push_str("data: ");
        out.push_str(part);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The lines of an event: SSE ends a line with `\r\n`, `\n` or a lone `\r`.
fn lines(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut lines = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                lines.push(&text[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            b'\n' => {
                lines.push(&text[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < bytes.len() {
        lines.push(&text[start..]);
    }
    lines
}

fn field_name(line: &str) -> &str {
    match line.find(':') {
        Some(at) => &line[..at],
        None => line,
    }
}

fn field_value(line: &str) -> &str {
    match line.find(':') {
        Some(at) => {
            let value = &line[at + 1..];
            value.strip_prefix(' ').unwrap_or(value)
        }
        None => "",
    }
}

fn parse(raw: Bytes) -> Event {
    let text = String::from_utf8_lossy(&raw);
    let mut kind = None;
    let mut data: Option<String> = None;
    for line in lines(&text) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        match field_name(line) {
            "event" => kind = Some(field_value(line).to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(field_value(line));
                }
                None => data = Some(field_value(line).to_owned()),
            },
            _ => {}
        }
    }
    Event { raw, kind, data }
}

/// Splits a byte stream into events.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: BytesMut,
    /// Where the search for the end of the current event resumes.
    scanned: usize,
}

/// The stream held more than [`MAX_EVENT`] bytes without an event end.
#[derive(Debug, thiserror::Error)]
#[error("an SSE event exceeds {MAX_EVENT} bytes")]
pub struct TooLarge;

impl Parser {
    /// Feed bytes; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, TooLarge> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.event_end() {
            let raw = self.buffer.split_to(end).freeze();
            self.scanned = 0;
            events.push(parse(raw));
        }
        if self.buffer.len() > MAX_EVENT {
            return Err(TooLarge);
        }
        Ok(events)
    }

    /// Bytes of an unfinished event at the end of the stream.
    pub fn rest(&mut self) -> Bytes {
        self.scanned = 0;
        self.buffer.split().freeze()
    }

    /// End (exclusive) of the first complete event: a line terminator followed by an empty
    /// line, with `\n`, `\r\n` or `\r` endings.
    fn event_end(&mut self) -> Option<usize> {
        let b = &self.buffer[..];
        let mut i = self.scanned.saturating_sub(3);
        while i < b.len() {
            let line_end = match b[i] {
                b'\n' => Some(i + 1),
                b'\r' if b.get(i + 1) == Some(&b'\n') => Some(i + 2),
                b'\r' if i + 1 < b.len() => Some(i + 1),
                _ => None,
            };
            if let Some(next) = line_end {
                // An empty line follows (or the event starts with one).
                match b.get(next) {
                    Some(b'\n') => return Some(next + 1),
                    Some(b'\r') if b.get(next + 1) == Some(&b'\n') => return Some(next + 2),
                    // A lone CR ends the empty line too; a LF arriving later starts the next
                    // event as an empty line, relayed as it came.
                    Some(b'\r') => return Some(next + 1),
                    _ => {}
                }
                if i == 0 && b[0] == b'\n' {
                    return Some(1);
                }
                i = next;
            } else {
                i += 1;
            }
        }
        self.scanned = b.len();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_keep_their_bytes() {
        let stream = b": keep-alive\n\nid: 7\nretry: 1000\nevent: message\ndata: {\"a\":1}\n\nevent: endpoint\r\ndata: /message?sessionId=x\r\n\r\n";
        for split in 1..stream.len() {
            let mut parser = Parser::default();
            let mut events = parser.push(&stream[..split]).unwrap();
            events.extend(parser.push(&stream[split..]).unwrap());
            let joined: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
            assert_eq!(joined, stream.to_vec());
            // A CR LF split between chunks may leave its LF as an empty event of its own: the
            // bytes relayed are the same.
            events.retain(|e| !matches!(&e.raw[..], b"\n"));
            assert_eq!(events.len(), 3, "split at {split}");
            assert_eq!(events[0].data, None);
            assert_eq!(events[1].data.as_deref(), Some("{\"a\":1}"));
            assert_eq!(events[2].kind.as_deref(), Some("endpoint"));
            assert_eq!(events[2].data.as_deref(), Some("/message?sessionId=x"));
        }
    }

    #[test]
    fn multi_line_data_and_rewrites_keep_other_fields() {
        let mut parser = Parser::default();
        let events = parser
            .push(b"id: 3\nevent: message\ndata: line1\ndata: line2\nx-extra: y\n\n")
            .unwrap();
        assert_eq!(events[0].data.as_deref(), Some("line1\nline2"));
        let rewritten = events[0].with_data("{}");
        assert_eq!(
            &rewritten[..],
            b"id: 3\nevent: message\ndata: {}\nx-extra: y\n\n"
        );
    }

    #[test]
    fn lone_carriage_returns_end_lines_when_rewriting() {
        let mut parser = Parser::default();
        let events = parser
            .push(b"event: message\rdata: old\rid: 4\r\r")
            .unwrap();
        assert_eq!(events[0].data.as_deref(), Some("old"));
        let rewritten = events[0].with_data("{}");
        let again = Parser::default().push(&rewritten).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].data.as_deref(), Some("{}"));
        assert_eq!(&rewritten[..], b"event: message\ndata: {}\nid: 4\n\n");
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut parser = Parser::default();
        let chunk = vec![b'a'; 1 << 20];
        let mut failed = false;
        for _ in 0..20 {
            if parser.push(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
