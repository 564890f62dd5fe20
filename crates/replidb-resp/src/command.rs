//! Client requests: arrays of bulk strings (what every client library
//! sends) and inline commands (a line of words, what a person types into
//! telnet or `nc`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::decode::{length_at, Step, Stop};
use crate::{DecodeError, Limits};

/// Argument slots reserved up front for a multibulk request: a count
/// above it (a client may announce `args_max` and send nothing) grows the
/// list as arguments actually arrive.
const PREALLOCATED_ARGS_MAX: usize = 64;

/// An incremental decoder of client requests.
///
/// Each decoded command is its arguments, the command name first. Bulk
/// arguments are slices of the bytes read (no copy). Empty requests
/// (`*0`, `*-1`, a blank inline line) are skipped, as Redis skips them.
///
/// The buffer must only grow between calls, apart from what the decoder
/// consumes, and must not be swapped for another: the decoder remembers
/// where the arguments of a pending request lie in it and how many bytes
/// that request needs at least (a request arriving in pieces is not
/// re-scanned on every read), so a changed buffer yields wrong arguments.
#[derive(Debug)]
pub struct CommandDecoder {
    limits: Limits,
    need: usize,
    /// A multibulk request whose first arguments have been scanned: the
    /// next call goes on from there rather than from the request's start,
    /// so a request of many arguments arriving in many reads (an `MSET`
    /// of a thousand keys in a bulk load) is scanned once, not once per
    /// read.
    partial: Option<Partial>,
}

/// How far a multibulk request has been scanned: its argument count, the
/// offset of its next argument in the buffer, and where each argument
/// before it lies (offset, length).
#[derive(Debug)]
struct Partial {
    count: usize,
    pos: usize,
    spans: Vec<(usize, usize)>,
}

impl CommandDecoder {
    /// A decoder enforcing `limits` (`depth_max` does not apply: requests
    /// are flat).
    pub fn new(limits: Limits) -> Self {
        CommandDecoder {
            limits,
            need: 0,
            partial: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The next complete request in `buf` (consumed), `Ok(None)` when more
    /// bytes are needed, or why the bytes can never be a request (the
    /// connection should then be closed: where the next request starts is
    /// unknown).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, DecodeError> {
        loop {
            if buf.is_empty() || buf.len() < self.need {
                return Ok(None);
            }
            let step = if buf[0] == b'*' {
                self.multibulk(buf)
            } else {
                self.inline(buf)
            };
            match step {
                Ok(args) if args.is_empty() => {
                    self.need = 0;
                    continue;
                }
                Ok(args) => {
                    self.need = 0;
                    return Ok(Some(args));
                }
                Err(Stop::Incomplete(need)) => {
                    self.need = need;
                    return Ok(None);
                }
                Err(Stop::Invalid(e)) => {
                    self.partial = None;
                    return Err(e);
                }
            }
        }
    }

    /// `*N\r\n` then N × `$len\r\nbytes\r\n`. The first pass only records
    /// where each argument lies; the request is split off and sliced once
    /// it is complete.
    fn multibulk(&mut self, buf: &mut BytesMut) -> Step<Vec<Bytes>> {
        let Partial {
            count,
            mut pos,
            mut spans,
        } = match self.partial.take() {
            Some(p) => {
                // The spans index this buffer: it may only have grown.
                debug_assert!(
                    buf.len() >= p.pos,
                    "the buffer shrank under a partial request"
                );
                p
            }
            None => {
                let (count, pos) = length_at(buf, 1, DecodeError::InvalidMultibulkLength)?;
                if count <= 0 {
                    buf.advance(pos);
                    return Ok(Vec::new());
                }
                if count as u64 > self.limits.args_max as u64 {
                    return Err(DecodeError::TooManyElements {
                        len: count,
                        max: self.limits.args_max,
                    }
                    .into());
                }
                // At most args_max, so it fits usize.
                let count = count as usize;
                Partial {
                    count,
                    pos,
                    spans: Vec::with_capacity(count.min(PREALLOCATED_ARGS_MAX)),
                }
            }
        };
        while spans.len() < count {
            match self.next_bulk(buf, pos) {
                Ok((start, len, end)) => {
                    spans.push((start, len));
                    pos = end;
                }
                Err(Stop::Incomplete(need)) => {
                    self.partial = Some(Partial { count, pos, spans });
                    return Err(Stop::Incomplete(need));
                }
                Err(invalid) => return Err(invalid),
            }
        }
        let frame = buf.split_to(pos).freeze();
        Ok(spans
            .into_iter()
            .map(|(s, len)| frame.slice(s..s + len))
            .collect())
    }

    /// The bulk string argument at `pos`: its start, length and the offset
    /// after its CRLF.
    fn next_bulk(&self, buf: &BytesMut, pos: usize) -> Step<(usize, usize, usize)> {
        let l = &self.limits;
        match buf.get(pos) {
            None => return Err(Stop::Incomplete(pos + 1)),
            Some(b'$') => {}
            Some(&other) => return Err(DecodeError::ExpectedBulk(char::from(other)).into()),
        }
        let (len, start) = length_at(buf, pos + 1, DecodeError::InvalidBulkLength)?;
        if len < 0 {
            return Err(DecodeError::InvalidBulkLength.into());
        }
        if len as u64 > l.bulk_bytes_max as u64 {
            return Err(DecodeError::BulkTooLarge {
                len,
                max: l.bulk_bytes_max,
            }
            .into());
        }
        // At most bulk_bytes_max, so it fits usize and cannot overflow.
        let len = len as usize;
        let end = start + len + 2;
        if end > l.frame_bytes_max {
            return Err(DecodeError::FrameTooLarge {
                max: l.frame_bytes_max,
            }
            .into());
        }
        if buf.len() < end {
            return Err(Stop::Incomplete(end));
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(DecodeError::MissingCrlf.into());
        }
        Ok((start, len, end))
    }

    /// A line of words, split the way Redis splits inline commands.
    fn inline(&self, buf: &mut BytesMut) -> Step<Vec<Bytes>> {
        let max = self.limits.inline_bytes_max;
        let window = &buf[..buf.len().min(max.saturating_add(1))];
        let Some(nl) = window.iter().position(|&b| b == b'\n') else {
            if buf.len() > max {
                return Err(DecodeError::InlineTooLong { max }.into());
            }
            return Err(Stop::Incomplete(buf.len() + 1));
        };
        let line = buf.split_to(nl + 1);
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let args = split_args(text)?;
        if args.len() > self.limits.args_max {
            return Err(DecodeError::TooManyElements {
                len: args.len() as i64,
                max: self.limits.args_max,
            }
            .into());
        }
        Ok(args)
    }
}

/// Split an inline line into arguments: whitespace separates them;
/// `"..."` holds spaces and the escapes `\n \r \t \b \a \\ \" \xHH`;
/// `'...'` holds spaces and `\'`. A closing quote must be followed by
/// whitespace or the end (Redis' `sdssplitargs`).
fn split_args(text: &[u8]) -> Result<Vec<Bytes>, DecodeError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut arg = Vec::new();
        match text[i] {
            b'"' => i = double_quoted(text, i + 1, &mut arg)?,
            b'\'' => i = single_quoted(text, i + 1, &mut arg)?,
            _ => {
                while i < text.len() && !text[i].is_ascii_whitespace() {
                    arg.push(text[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(arg));
    }
    Ok(args)
}

/// After a closing quote at `i`: whitespace or the end, else unbalanced.
fn after_quote(text: &[u8], i: usize) -> Result<usize, DecodeError> {
    match text.get(i + 1) {
        None => Ok(i + 1),
        Some(b) if b.is_ascii_whitespace() => Ok(i + 1),
        Some(_) => Err(DecodeError::UnbalancedQuotes),
    }
}

fn double_quoted(text: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Result<usize, DecodeError> {
    loop {
        match text.get(i) {
            None => return Err(DecodeError::UnbalancedQuotes),
            Some(b'"') => return after_quote(text, i),
            Some(b'\\') => {
                let hex = text
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match (text.get(i + 1), hex) {
                    (Some(b'x'), Some(byte)) => {
                        arg.push(byte);
                        i += 4;
                        continue;
                    }
                    (Some(&c), _) => {
                        arg.push(match c {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        i += 2;
                    }
                    (None, _) => return Err(DecodeError::UnbalancedQuotes),
                }
            }
            Some(&c) => {
                arg.push(c);
                i += 1;
            }
        }
    }
}

fn single_quoted(text: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Result<usize, DecodeError> {
    loop {
        match text.get(i) {
            None => return Err(DecodeError::UnbalancedQuotes),
            Some(b'\'') => return after_quote(text, i),
            Some(b'\\') if text.get(i + 1) == Some(&b'\'') => {
                arg.push(b'\'');
                i += 2;
            }
            Some(&c) => {
                arg.push(c);
                i += 1;
            }
        }
    }
}

/// Append a request as clients send it: an array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    out.put_u8(b'*');
    out.put_slice(args.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.put_u8(b'$');
        out.put_slice(a.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Vec<String>>, DecodeError> {
        let mut d = CommandDecoder::new(Limits::default());
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(args) = d.decode(&mut buf)? {
            out.push(
                args.iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            );
        }
        Ok(out)
    }

    #[test]
    fn pipelined_requests_decode_in_order() {
        let got =
            all(b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nGET k\r\n").unwrap();
        assert_eq!(
            got,
            vec![
                vec!["PING".to_string()],
                vec!["SET".into(), "k".into(), "".into()],
                vec!["GET".into(), "k".into()]
            ]
        );
    }

    #[test]
    fn empty_requests_are_skipped() {
        let got = all(b"*0\r\n*-1\r\n\r\n   \r\nPING\n").unwrap();
        assert_eq!(got, vec![vec!["PING".to_string()]]);
    }

    #[test]
    fn inline_quoting_follows_redis() {
        let got = all(b"SET \"a b\" 'it\\'s' \"\\x41\\n\"\r\n").unwrap();
        assert_eq!(
            got,
            vec![vec![
                "SET".to_string(),
                "a b".into(),
                "it's".into(),
                "A\n".into()
            ]]
        );
        assert_eq!(all(b"SET \"a\r\n"), Err(DecodeError::UnbalancedQuotes));
        assert_eq!(all(b"SET \"a\"b\r\n"), Err(DecodeError::UnbalancedQuotes));
    }

    #[test]
    fn bulk_arguments_are_slices_of_the_read_buffer() {
        let mut d = CommandDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        encode_command(&[&b"SET"[..], b"key", &[0u8, 255, 13, 10][..]], &mut buf);
        let args = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&args[2][..], &[0u8, 255, 13, 10]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_large_argument_arriving_in_pieces_waits_for_its_bytes() {
        let mut d = CommandDecoder::new(Limits::default());
        let value = vec![b'x'; 100_000];
        let mut whole = BytesMut::new();
        encode_command(&[&b"SET"[..], b"k", &value], &mut whole);
        let mut buf = BytesMut::new();
        for chunk in whole.chunks(4096) {
            assert!(d.decode(&mut buf).unwrap().is_none());
            buf.extend_from_slice(chunk);
        }
        let args = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(args[2].len(), 100_000);
    }

    #[test]
    fn oversize_and_malformed_requests_are_refused() {
        let limits = Limits {
            args_max: 3,
            bulk_bytes_max: 10,
            inline_bytes_max: 16,
            frame_bytes_max: 30,
            depth_max: 1,
        };
        let dec = |b: &[u8]| CommandDecoder::new(limits).decode(&mut BytesMut::from(b));
        assert!(matches!(
            dec(b"*4\r\n"),
            Err(DecodeError::TooManyElements { .. })
        ));
        assert!(matches!(
            dec(b"*1\r\n$11\r\n"),
            Err(DecodeError::BulkTooLarge { .. })
        ));
        assert!(matches!(
            dec(b"*3\r\n$10\r\n0123456789\r\n$10\r\n"),
            Err(DecodeError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            dec(&[b'a'; 17]),
            Err(DecodeError::InlineTooLong { .. })
        ));
        assert!(matches!(
            dec(b"a b c d\r\n"),
            Err(DecodeError::TooManyElements { .. })
        ));
        assert!(matches!(
            dec(b"*1\r\n:1\r\n"),
            Err(DecodeError::ExpectedBulk(':'))
        ));
        assert!(matches!(
            dec(b"*x\r\n"),
            Err(DecodeError::InvalidMultibulkLength)
        ));
        assert!(matches!(
            dec(b"*1\r\n$-1\r\n"),
            Err(DecodeError::InvalidBulkLength)
        ));
        assert!(matches!(
            dec(b"*1\r\n$1\r\nab\r\n"),
            Err(DecodeError::MissingCrlf)
        ));
        assert!(matches!(
            dec(b"*1\r\n$1111111111111111111111111111111111"),
            Err(DecodeError::LineTooLong { .. })
        ));
        // Within the limits but incomplete: wait.
        assert_eq!(dec(&[b'a'; 16]).unwrap(), None);
        assert_eq!(dec(b"*3\r\n$10\r\n01234").unwrap(), None);
    }
}
