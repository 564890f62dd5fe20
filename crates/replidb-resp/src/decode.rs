//! Bytes to values, incrementally: [`ValueDecoder`], and the line and
//! number scanning it shares with the command decoder.

use bytes::{Buf, Bytes, BytesMut};

use crate::{DecodeError, Limits, Value, LENGTH_LINE_BYTES_MAX};

/// Why decoding stopped before a whole value.
#[derive(Debug)]
pub(crate) enum Stop {
    /// More bytes are needed: at least this many in the buffer in all.
    Incomplete(usize),
    /// The bytes can never become a valid value.
    Invalid(DecodeError),
}

impl From<DecodeError> for Stop {
    fn from(e: DecodeError) -> Self {
        Stop::Invalid(e)
    }
}

pub(crate) type Step<T> = Result<T, Stop>;

/// The line starting at `pos`: `(start, end)` of its content, excluding
/// the CRLF, which ends at `end + 2`. A line longer than `max` bytes is
/// refused as soon as `max + 2` bytes without a newline are in sight,
/// rather than buffered on and on.
pub(crate) fn line_at(buf: &[u8], pos: usize, max: usize) -> Step<(usize, usize)> {
    let window_end = buf.len().min(pos.saturating_add(max).saturating_add(2));
    let window = buf.get(pos..window_end).unwrap_or(&[]);
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => {
            // `\n` must follow `\r`: a bare newline is not RESP framing.
            if i == 0 || window[i - 1] != b'\r' {
                return Err(DecodeError::MissingCrlf.into());
            }
            Ok((pos, pos + i - 1))
        }
        None if window.len() >= max.saturating_add(2) => {
            Err(DecodeError::LineTooLong { max }.into())
        }
        None => Err(Stop::Incomplete(window_end + 1)),
    }
}

/// A strict decimal `i64`: an optional `-`, then digits, nothing else.
pub(crate) fn parse_i64(text: &[u8]) -> Option<i64> {
    let (neg, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // 19 digits fit in u64 without overflow; the sign is applied after.
    let magnitude = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    if neg {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// The number on the length/count line at `pos`, and where the line ends
/// (past its CRLF).
pub(crate) fn length_at(buf: &[u8], pos: usize, bad: DecodeError) -> Step<(i64, usize)> {
    let (start, end) = line_at(buf, pos, LENGTH_LINE_BYTES_MAX)?;
    let n = parse_i64(&buf[start..end]).ok_or(Stop::Invalid(bad))?;
    Ok((n, end + 2))
}

/// An incremental decoder of any RESP value.
///
/// Feed it the bytes read so far; it returns a value once one is complete
/// and consumes exactly its bytes. The buffer must only grow between calls
/// (apart from what the decoder consumes): it remembers how many bytes the
/// pending value needs at least and does not look again before then.
#[derive(Debug)]
pub struct ValueDecoder {
    limits: Limits,
    need: usize,
}

impl ValueDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        ValueDecoder { limits, need: 0 }
    }

    /// The next complete value in `buf` (consumed), `Ok(None)` if more
    /// bytes are needed (nothing consumed), or why the bytes are invalid.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Value>, DecodeError> {
        if buf.is_empty() || buf.len() < self.need {
            return Ok(None);
        }
        let mut p = Parser {
            buf: &buf[..],
            pos: 0,
            limits: &self.limits,
        };
        match p.value(0) {
            Ok(v) => {
                let used = p.pos;
                buf.advance(used);
                self.need = 0;
                Ok(Some(v))
            }
            Err(Stop::Incomplete(need)) => {
                self.need = need;
                Ok(None)
            }
            Err(Stop::Invalid(e)) => Err(e),
        }
    }
}

/// A cursor over the bytes of one value.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: &'a Limits,
}

impl Parser<'_> {
    fn value(&mut self, depth: usize) -> Step<Value> {
        let Some(&kind) = self.buf.get(self.pos) else {
            return Err(Stop::Incomplete(self.pos + 1));
        };
        self.pos += 1;
        let v = match kind {
            b'+' => Value::Simple(self.text_line()?),
            b'-' => Value::Error(self.text_line()?),
            b':' => Value::Integer(self.integer_line()?),
            b'$' => match self.blob()? {
                Some(b) => Value::Bulk(b),
                None => Value::Null,
            },
            b'!' => Value::BulkError(self.blob()?.ok_or(DecodeError::InvalidBulkLength)?),
            b'=' => self.verbatim()?,
            b'_' => {
                let (s, e) = self.line(0)?;
                if s != e {
                    return Err(DecodeError::InvalidNull.into());
                }
                Value::Null
            }
            b'#' => match self.raw_line(1)? {
                b"t" => Value::Boolean(true),
                b"f" => Value::Boolean(false),
                _ => return Err(DecodeError::InvalidBoolean.into()),
            },
            b',' => Value::Double(self.double_line()?),
            b'(' => Value::BigNumber(self.big_number_line()?),
            b'*' => match self.count(depth)? {
                Some(n) => Value::Array(self.items(n, depth)?),
                None => Value::Null,
            },
            b'~' => {
                let n = self.count_required(depth)?;
                Value::Set(self.items(n, depth)?)
            }
            b'>' => {
                let n = self.count_required(depth)?;
                Value::Push(self.items(n, depth)?)
            }
            b'%' => {
                let n = self.count_required(depth)?;
                let mut pairs = Vec::new();
                for _ in 0..n {
                    let k = self.value(depth + 1)?;
                    let v = self.value(depth + 1)?;
                    pairs.push((k, v));
                }
                Value::Map(pairs)
            }
            other => return Err(DecodeError::UnknownType(char::from(other)).into()),
        };
        self.check_frame(self.pos)?;
        Ok(v)
    }

    fn check_frame(&self, end: usize) -> Step<()> {
        if end > self.limits.frame_bytes_max {
            return Err(DecodeError::FrameTooLarge {
                max: self.limits.frame_bytes_max,
            }
            .into());
        }
        Ok(())
    }

    /// The content of the line at the cursor (at most `max` bytes);
    /// advances past its CRLF.
    fn line(&mut self, max: usize) -> Step<(usize, usize)> {
        let (s, e) = line_at(self.buf, self.pos, max)?;
        self.check_frame(e + 2)?;
        self.pos = e + 2;
        Ok((s, e))
    }

    fn raw_line(&mut self, max: usize) -> Step<&[u8]> {
        let (s, e) = self.line(max)?;
        Ok(&self.buf[s..e])
    }

    fn text_line(&mut self) -> Step<String> {
        let max = self.limits.inline_bytes_max;
        let raw = self.raw_line(max)?;
        if raw.contains(&b'\r') {
            return Err(DecodeError::InvalidSimple.into());
        }
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidSimple.into())
    }

    fn integer_line(&mut self) -> Step<i64> {
        let raw = self.raw_line(LENGTH_LINE_BYTES_MAX)?;
        parse_i64(raw).ok_or_else(|| DecodeError::InvalidInteger.into())
    }

    fn double_line(&mut self) -> Step<f64> {
        let raw = self.raw_line(LENGTH_LINE_BYTES_MAX * 16)?;
        let text = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidDouble)?;
        match text {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            "nan" => Ok(f64::NAN),
            _ => text.parse().map_err(|_| DecodeError::InvalidDouble.into()),
        }
    }

    fn big_number_line(&mut self) -> Step<String> {
        let max = self.limits.inline_bytes_max;
        let raw = self.raw_line(max)?;
        let digits = raw.strip_prefix(b"-").unwrap_or(raw);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(DecodeError::InvalidInteger.into());
        }
        // Checked to be ASCII digits and a sign just above.
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    /// A length-prefixed body: `None` for RESP2's `-1`.
    fn blob(&mut self) -> Step<Option<Bytes>> {
        let (len, start) = length_at(self.buf, self.pos, DecodeError::InvalidBulkLength)?;
        if len == -1 {
            self.pos = start;
            return Ok(None);
        }
        if len < 0 {
            return Err(DecodeError::InvalidBulkLength.into());
        }
        if len as u64 > self.limits.bulk_bytes_max as u64 {
            return Err(DecodeError::BulkTooLarge {
                len,
                max: self.limits.bulk_bytes_max,
            }
            .into());
        }
        // Fits usize: at most bulk_bytes_max.
        let len = len as usize;
        let end = start + len + 2;
        self.check_frame(end)?;
        if self.buf.len() < end {
            return Err(Stop::Incomplete(end));
        }
        if &self.buf[end - 2..end] != b"\r\n" {
            return Err(DecodeError::MissingCrlf.into());
        }
        self.pos = end;
        Ok(Some(Bytes::copy_from_slice(&self.buf[start..start + len])))
    }

    fn verbatim(&mut self) -> Step<Value> {
        let body = self.blob()?.ok_or(DecodeError::InvalidVerbatim)?;
        if body.len() < 4 || body[3] != b':' {
            return Err(DecodeError::InvalidVerbatim.into());
        }
        let format = [body[0], body[1], body[2]];
        Ok(Value::Verbatim {
            format,
            text: body.slice(4..),
        })
    }

    /// An aggregate's count, `None` for RESP2's `*-1`; checked against the
    /// limits before anything is allocated for it.
    fn count(&mut self, depth: usize) -> Step<Option<usize>> {
        if depth >= self.limits.depth_max {
            return Err(DecodeError::TooDeep {
                max: self.limits.depth_max,
            }
            .into());
        }
        let (n, next) = length_at(self.buf, self.pos, DecodeError::InvalidMultibulkLength)?;
        self.pos = next;
        if n == -1 {
            return Ok(None);
        }
        if n < 0 {
            return Err(DecodeError::InvalidMultibulkLength.into());
        }
        if n as u64 > self.limits.args_max as u64 {
            return Err(DecodeError::TooManyElements {
                len: n,
                max: self.limits.args_max,
            }
            .into());
        }
        Ok(Some(n as usize))
    }

    fn count_required(&mut self, depth: usize) -> Step<usize> {
        self.count(depth)?
            .ok_or_else(|| DecodeError::InvalidMultibulkLength.into())
    }

    fn items(&mut self, n: usize, depth: usize) -> Step<Vec<Value>> {
        // No capacity from the declared count: every element needs at least
        // three bytes, so the vector grows only as far as the input goes.
        let mut items = Vec::new();
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Option<Value>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        ValueDecoder::new(Limits::default()).decode(&mut buf)
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(one(b"+OK\r\n").unwrap(), Some(Value::ok()));
        assert_eq!(one(b"-ERR x\r\n").unwrap(), Some(Value::error("ERR x")));
        assert_eq!(one(b":-5\r\n").unwrap(), Some(Value::Integer(-5)));
        assert_eq!(one(b"$3\r\nabc\r\n").unwrap(), Some(Value::bulk_str("abc")));
        assert_eq!(one(b"$-1\r\n").unwrap(), Some(Value::Null));
        assert_eq!(one(b"*-1\r\n").unwrap(), Some(Value::Null));
        assert_eq!(one(b"_\r\n").unwrap(), Some(Value::Null));
        assert_eq!(one(b"#t\r\n").unwrap(), Some(Value::Boolean(true)));
        assert_eq!(
            one(b",-inf\r\n").unwrap(),
            Some(Value::Double(f64::NEG_INFINITY))
        );
        assert_eq!(one(b",1e3\r\n").unwrap(), Some(Value::Double(1000.0)));
        assert_eq!(
            one(b"(-123456789012345678901234567890\r\n").unwrap(),
            Some(Value::BigNumber("-123456789012345678901234567890".into()))
        );
        assert_eq!(
            one(b"=7\r\ntxt:abc\r\n").unwrap(),
            Some(Value::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"abc")
            })
        );
        assert_eq!(
            one(b"%1\r\n+a\r\n~2\r\n:1\r\n>0\r\n").unwrap(),
            Some(Value::Map(vec![(
                Value::simple("a"),
                Value::Set(vec![Value::Integer(1), Value::Push(vec![])])
            )]))
        );
    }

    #[test]
    fn incomplete_input_consumes_nothing() {
        let whole = b"*2\r\n$5\r\nhello\r\n:7\r\n";
        let mut d = ValueDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = d.decode(&mut buf).unwrap();
            if i + 1 < whole.len() {
                assert_eq!(got, None, "after {} bytes", i + 1);
                assert_eq!(buf.len(), i + 1);
            } else {
                assert_eq!(
                    got,
                    Some(Value::Array(vec![
                        Value::bulk_str("hello"),
                        Value::Integer(7)
                    ]))
                );
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn limits_are_checked_before_the_bytes_arrive() {
        let small = Limits {
            args_max: 2,
            bulk_bytes_max: 4,
            inline_bytes_max: 8,
            frame_bytes_max: 64,
            depth_max: 2,
        };
        let dec = |b: &[u8]| ValueDecoder::new(small).decode(&mut BytesMut::from(b));
        assert!(matches!(
            dec(b"*3\r\n"),
            Err(DecodeError::TooManyElements { .. })
        ));
        assert!(matches!(
            dec(b"$5\r\n"),
            Err(DecodeError::BulkTooLarge { .. })
        ));
        assert!(matches!(
            dec(b"*1\r\n*1\r\n*1\r\n"),
            Err(DecodeError::TooDeep { .. })
        ));
        assert!(matches!(
            dec(b"+0123456789"),
            Err(DecodeError::LineTooLong { .. })
        ));
        assert!(matches!(
            dec(b"*2147483647\r\n"),
            Err(DecodeError::TooManyElements { .. })
        ));
        assert!(matches!(
            dec(b"$99999999999999999999\r\n"),
            Err(DecodeError::InvalidBulkLength)
        ));
        assert_eq!(dec(b"$4\r\n").unwrap(), None);
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &b"?\r\n"[..],
            b":12a\r\n",
            b":\r\n",
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b"#x\r\n",
            b"_x\r\n",
            b"=2\r\nab\r\n",
            b"+a\nb",
            b"(12x\r\n",
            b",one\r\n",
        ] {
            assert!(one(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn strict_integers() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b" 1"), None);
    }
}
