//! Property tests of record framing.

use proptest::prelude::*;
use replidb_core::{Epoch, Hlc, Lsn, Op, Record};
use replidb_wal::codec::{decode_record, encode_record, DecodeError, FRAME_HEADER_LEN};

fn arb_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(Vec::new()),
        1 => (1usize..300_000).prop_map(|n| vec![0xA5; n]),
    ]
}

fn arb_leaf() -> impl Strategy<Value = Op> {
    prop_oneof![
        (".{0,40}", arb_value()).prop_map(|(key, value)| Op::Put { key, value }),
        ".{0,40}".prop_map(|key| Op::Delete { key }),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => arb_leaf(),
        1 => prop::collection::vec(arb_leaf(), 0..8).prop_map(Op::Batch),
    ]
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        arb_op(),
    )
        .prop_map(|(lsn, epoch, wall_ms, logical, op)| Record {
            lsn: Lsn(lsn),
            epoch: Epoch(epoch),
            hlc: Hlc { wall_ms, logical },
            op,
        })
}

fn encode(r: &Record) -> Vec<u8> {
    let mut v = Vec::new();
    encode_record(r, &mut v).unwrap();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn round_trip(r in arb_record(), tail in prop::collection::vec(any::<u8>(), 0..16)) {
        let mut buf = encode(&r);
        let len = buf.len();
        buf.extend_from_slice(&tail); // bytes after the frame are not consumed
        prop_assert_eq!(decode_record(&buf).unwrap(), Some((r, len)));
    }

    #[test]
    fn truncated_frames_need_more_bytes(r in arb_record(), cut in any::<prop::sample::Index>()) {
        let buf = encode(&r);
        let cut = cut.index(buf.len()); // 0 ..= len-1
        prop_assert_eq!(decode_record(&buf[..cut]), Ok(None));
    }

    #[test]
    fn payload_bit_flip_is_bad_checksum(r in arb_record(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut buf = encode(&r);
        let i = FRAME_HEADER_LEN + at.index(buf.len() - FRAME_HEADER_LEN);
        buf[i] ^= 1 << bit;
        prop_assert_eq!(decode_record(&buf), Err(DecodeError::BadChecksum));
    }

    #[test]
    fn any_bit_flip_never_yields_a_record(r in arb_record(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut buf = encode(&r);
        let i = at.index(buf.len());
        buf[i] ^= 1 << bit;
        // Header flips may read as "incomplete" or a bad length; never as a
        // (different) record, and never a panic.
        let res = decode_record(&buf);
        prop_assert!(!matches!(res, Ok(Some(_))), "flip at {} decoded: {:?}", i, res);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_record(&bytes);
    }
}
