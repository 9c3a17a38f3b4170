//! An incremental server-sent-events reader for metered streams.
//!
//! Events are separated by a blank line; `\n`, `\r\n` and `\r` all end a line (the SSE
//! standard; mppx's client splits on `"\n\n"` only). `event:` sets the type, `data:` lines are
//! joined with `\n`, one optional space after the colon is dropped, comments (`:`) and other
//! fields are ignored. An event without data is dropped, as mppx and browsers do.

/// The most bytes one event may hold before the stream is refused (a server that never ends
/// an event cannot make the client buffer without bound).
pub const MAX_EVENT_LEN: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` type (`message` when absent).
    pub event: String,
    /// The data lines joined with `\n`.
    pub data: String,
}

/// Splits a byte stream into [`SseEvent`]s. Feed it chunks as they arrive.
#[derive(Debug, Default)]
pub struct SseReader {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
}

/// An event longer than [`MAX_EVENT_LEN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event longer than {max} bytes")]
pub struct EventTooLong {
    /// The limit.
    pub max: usize,
}

impl SseReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `chunk` and returns the events it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, EventTooLong> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut events);
                }
                _ => {
                    self.buffer.push(byte);
                    let pending = self.data.as_ref().map_or(0, String::len) + self.buffer.len();
                    if pending > MAX_EVENT_LEN {
                        return Err(EventTooLong { max: MAX_EVENT_LEN });
                    }
                }
            }
        }
        Ok(events)
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.buffer)).into_owned();
        if line.is_empty() {
            let event = self.event.take();
            if let Some(data) = self.data.take() {
                events.push(SseEvent {
                    event: event.unwrap_or_else(|| "message".to_owned()),
                    data,
                });
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(reader: &mut SseReader, input: &[u8]) -> Vec<SseEvent> {
        reader.feed(input).expect("within the limit")
    }

    #[test]
    fn splits_events_across_chunks_and_line_endings() {
        let mut reader = SseReader::new();
        let stream = b"event: message\ndata: token 0\n\nevent: payment-need-voucher\r\ndata: {\"a\":1}\r\n\r\ndata: x\rdata: y\r\r";
        // Byte by byte: every split point is exercised.
        let mut events = Vec::new();
        for byte in stream {
            events.extend(all(&mut reader, std::slice::from_ref(byte)));
        }
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "message".into(),
                    data: "token 0".into()
                },
                SseEvent {
                    event: "payment-need-voucher".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn drops_events_without_data_and_comments() {
        let mut reader = SseReader::new();
        let events = all(&mut reader, b": keep-alive\n\nevent: ping\n\ndata:\n\n");
        assert_eq!(
            events,
            vec![SseEvent {
                event: "message".into(),
                data: String::new()
            }]
        );
    }

    #[test]
    fn refuses_an_event_that_never_ends() {
        let mut reader = SseReader::new();
        let line = vec![b'a'; MAX_EVENT_LEN + 1];
        assert_eq!(reader.feed(&line), Err(EventTooLong { max: MAX_EVENT_LEN }));
    }
}
