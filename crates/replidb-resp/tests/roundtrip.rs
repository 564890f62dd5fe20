//! Property tests of the codec: every value survives encode → decode (in
//! one piece, in arbitrary pieces, and pipelined behind others), every
//! request survives encode → decode, and no input whatsoever makes a
//! decoder panic or hand back more than it was given.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use replidb_resp::{
    encode, encode_command, CommandDecoder, DecodeError, Limits, Protocol, Value, ValueDecoder,
};

/// Text a simple string or error can carry: no CR or LF.
fn line_text() -> impl Strategy<Value = String> {
    "[^\r\n]{0,40}"
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

/// Scalars RESP2 can carry unchanged.
fn resp2_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        line_text().prop_map(Value::Simple),
        line_text().prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        blob().prop_map(Value::Bulk),
        Just(Value::Null),
    ]
}

/// Values RESP2 can carry unchanged.
fn resp2_value() -> impl Strategy<Value = Value> {
    resp2_leaf().prop_recursive(4, 64, 8, |inner| {
        prop::collection::vec(inner, 0..8).prop_map(Value::Array)
    })
}

/// Every value RESP3 can carry (NaN aside: it is never equal to itself).
fn resp3_value() -> impl Strategy<Value = Value> {
    let double = prop_oneof![
        any::<f64>().prop_filter("not NaN", |d| !d.is_nan()),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
    ];
    let leaf = prop_oneof![
        resp2_leaf(),
        any::<bool>().prop_map(Value::Boolean),
        double.prop_map(Value::Double),
        "-?[0-9]{1,60}".prop_map(Value::BigNumber),
        blob().prop_map(Value::BulkError),
        ("[a-z]{3}", blob()).prop_map(|(f, text)| {
            let b = f.as_bytes();
            Value::Verbatim {
                format: [b[0], b[1], b[2]],
                text,
            }
        }),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Push),
            prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

fn encoded(v: &Value, p: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(v, p, &mut out);
    out
}

fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Value>, DecodeError> {
    let mut d = ValueDecoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(v) = d.decode(&mut buf)? {
            out.push(v);
        }
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn resp3_values_round_trip(v in resp3_value(), chunk in 1usize..64) {
        let bytes = encoded(&v, Protocol::Resp3);
        prop_assert_eq!(decode_all(&bytes, bytes.len()).unwrap(), vec![v.clone()]);
        prop_assert_eq!(decode_all(&bytes, chunk).unwrap(), vec![v]);
    }

    #[test]
    fn resp2_values_round_trip(v in resp2_value(), chunk in 1usize..64) {
        let bytes = encoded(&v, Protocol::Resp2);
        prop_assert_eq!(decode_all(&bytes, chunk).unwrap(), vec![v]);
    }

    #[test]
    fn every_resp3_value_has_a_decodable_resp2_form(v in resp3_value()) {
        let bytes = encoded(&v, Protocol::Resp2);
        prop_assert_eq!(decode_all(&bytes, bytes.len()).unwrap().len(), 1);
    }

    #[test]
    fn pipelined_values_decode_in_order(vs in prop::collection::vec(resp3_value(), 1..8), chunk in 1usize..128) {
        let mut bytes = BytesMut::new();
        for v in &vs {
            encode(v, Protocol::Resp3, &mut bytes);
        }
        prop_assert_eq!(decode_all(&bytes, chunk).unwrap(), vs);
    }

    #[test]
    fn requests_round_trip(
        reqs in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), 1..6),
        chunk in 1usize..64,
    ) {
        let mut bytes = BytesMut::new();
        for r in &reqs {
            encode_command(r, &mut bytes);
        }
        let mut d = CommandDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in bytes.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(args) = d.decode(&mut buf).unwrap() {
                got.push(args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
        }
        prop_assert_eq!(got, reqs);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
        let small = Limits { args_max: 16, bulk_bytes_max: 64, inline_bytes_max: 64, frame_bytes_max: 256, depth_max: 4 };
        for limits in [Limits::default(), small] {
            let mut values = ValueDecoder::new(limits);
            let mut commands = CommandDecoder::new(limits);
            let (mut vbuf, mut cbuf) = (BytesMut::new(), BytesMut::new());
            let (mut vdone, mut cdone) = (false, false);
            for piece in bytes.chunks(chunk) {
                vbuf.extend_from_slice(piece);
                cbuf.extend_from_slice(piece);
                while !vdone {
                    match values.decode(&mut vbuf) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => vdone = true,
                    }
                }
                while !cdone {
                    match commands.decode(&mut cbuf) {
                        Ok(Some(args)) => {
                            prop_assert!(!args.is_empty());
                            prop_assert!(args.len() <= limits.args_max);
                        }
                        Ok(None) => break,
                        Err(_) => cdone = true,
                    }
                }
            }
        }
    }

    #[test]
    fn mutated_encodings_never_panic(v in resp3_value(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = encoded(&v, Protocol::Resp3).to_vec();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode_all_lenient(&bytes);
    }
}

/// Decode until done or an error, without asserting anything about the
/// remainder (mutated input may leave an incomplete tail).
fn decode_all_lenient(bytes: &[u8]) -> Result<usize, DecodeError> {
    let mut d = ValueDecoder::new(Limits::default());
    let mut buf = BytesMut::from(bytes);
    let mut n = 0;
    while d.decode(&mut buf)?.is_some() {
        n += 1;
    }
    Ok(n)
}
