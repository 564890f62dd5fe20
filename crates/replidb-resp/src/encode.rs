//! Values to bytes.

use bytes::{BufMut, BytesMut};

use crate::{Protocol, Value};

/// Append `value` to `out` as `proto` writes it.
///
/// On RESP2 the RESP3-only types take their RESP2 form (what Redis sends a
/// RESP2 client): null → `$-1`, boolean → `:1`/`:0`, double and big number
/// → bulk strings, bulk error → simple error (as UTF-8 text), verbatim → bulk string, map
/// → flat array, set and push → array.
///
/// Simple strings and errors cannot hold CR or LF; any are replaced with
/// spaces, so text that came from a client (an unknown command's name in
/// an error) can never break the framing.
pub fn encode(value: &Value, proto: Protocol, out: &mut BytesMut) {
    let resp3 = proto == Protocol::Resp3;
    match value {
        Value::Simple(s) => line(out, b'+', s.as_bytes()),
        Value::Error(s) => line(out, b'-', s.as_bytes()),
        Value::Integer(n) => number(out, b':', *n),
        Value::Bulk(b) => bulk(out, b'$', b),
        Value::Null if resp3 => out.put_slice(b"_\r\n"),
        Value::Null => out.put_slice(b"$-1\r\n"),
        Value::Boolean(b) if resp3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Value::Boolean(b) => number(out, b':', i64::from(*b)),
        Value::Double(d) if resp3 => line(out, b',', format_double(*d).as_bytes()),
        Value::Double(d) => bulk(out, b'$', format_double(*d).as_bytes()),
        Value::BigNumber(n) if resp3 => line(out, b'(', n.as_bytes()),
        Value::BigNumber(n) => bulk(out, b'$', n.as_bytes()),
        Value::BulkError(b) if resp3 => bulk(out, b'!', b),
        // A simple error is text: replace what is not UTF-8.
        Value::BulkError(b) => line(out, b'-', String::from_utf8_lossy(b).as_bytes()),
        Value::Verbatim { format, text } if resp3 => {
            header(out, b'=', (text.len() + 4) as i64);
            out.put_slice(format);
            out.put_u8(b':');
            out.put_slice(text);
            out.put_slice(b"\r\n");
        }
        Value::Verbatim { text, .. } => bulk(out, b'$', text),
        Value::Array(items) => aggregate(out, b'*', items, proto),
        Value::Set(items) => aggregate(out, if resp3 { b'~' } else { b'*' }, items, proto),
        Value::Push(items) => aggregate(out, if resp3 { b'>' } else { b'*' }, items, proto),
        Value::Map(pairs) => {
            if resp3 {
                header(out, b'%', pairs.len() as i64);
            } else {
                header(out, b'*', (pairs.len() * 2) as i64);
            }
            for (k, v) in pairs {
                encode(k, proto, out);
                encode(v, proto, out);
            }
        }
    }
}

/// The RESP3 spelling of a double: `inf`, `-inf`, `nan`, or Rust's
/// shortest representation that parses back to the same number.
fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".to_string()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        format!("{d:?}")
    }
}

fn aggregate(out: &mut BytesMut, kind: u8, items: &[Value], proto: Protocol) {
    header(out, kind, items.len() as i64);
    for item in items {
        encode(item, proto, out);
    }
}

/// `kind` + text + CRLF, with CR and LF in the text replaced by spaces.
fn line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(kind);
    for &b in text {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
}

fn bulk(out: &mut BytesMut, kind: u8, data: &[u8]) {
    header(out, kind, data.len() as i64);
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

fn header(out: &mut BytesMut, kind: u8, n: i64) {
    number(out, kind, n);
}

/// `kind` + decimal `n` + CRLF, without allocating.
fn number(out: &mut BytesMut, kind: u8, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.reserve(24);
    out.put_u8(kind);
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn enc(v: &Value, p: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(v, p, &mut out);
        out.to_vec()
    }

    #[test]
    fn resp2_forms() {
        use Protocol::Resp2 as P;
        assert_eq!(enc(&Value::ok(), P), b"+OK\r\n");
        assert_eq!(enc(&Value::error("ERR no"), P), b"-ERR no\r\n");
        assert_eq!(enc(&Value::Integer(-12), P), b":-12\r\n");
        assert_eq!(
            enc(&Value::Integer(i64::MIN), P),
            b":-9223372036854775808\r\n"
        );
        assert_eq!(enc(&Value::bulk_str("hi"), P), b"$2\r\nhi\r\n");
        assert_eq!(enc(&Value::Null, P), b"$-1\r\n");
        assert_eq!(enc(&Value::Boolean(true), P), b":1\r\n");
        assert_eq!(enc(&Value::Double(1.5), P), b"$3\r\n1.5\r\n");
        let map = Value::Map(vec![(Value::bulk_str("a"), Value::Integer(1))]);
        assert_eq!(enc(&map, P), b"*2\r\n$1\r\na\r\n:1\r\n");
        let verb = Value::Verbatim {
            format: *b"txt",
            text: Bytes::from_static(b"x"),
        };
        assert_eq!(enc(&verb, P), b"$1\r\nx\r\n");
    }

    #[test]
    fn resp3_forms() {
        use Protocol::Resp3 as P;
        assert_eq!(enc(&Value::Null, P), b"_\r\n");
        assert_eq!(enc(&Value::Boolean(false), P), b"#f\r\n");
        assert_eq!(enc(&Value::Double(f64::INFINITY), P), b",inf\r\n");
        assert_eq!(enc(&Value::Double(f64::NAN), P), b",nan\r\n");
        let map = Value::Map(vec![(Value::bulk_str("a"), Value::Integer(1))]);
        assert_eq!(enc(&map, P), b"%1\r\n$1\r\na\r\n:1\r\n");
        let verb = Value::Verbatim {
            format: *b"txt",
            text: Bytes::from_static(b"x"),
        };
        assert_eq!(enc(&verb, P), b"=5\r\ntxt:x\r\n");
        assert_eq!(enc(&Value::Set(vec![]), P), b"~0\r\n");
    }

    #[test]
    fn simple_strings_cannot_break_framing() {
        let v = Value::error("ERR unknown command 'a\r\n+OK'");
        assert_eq!(
            enc(&v, Protocol::Resp2),
            b"-ERR unknown command 'a  +OK'\r\n"
        );
    }
}
