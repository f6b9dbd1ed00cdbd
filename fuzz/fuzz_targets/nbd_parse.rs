//! Arbitrary bytes as a client's side of an NBD session, parsed the way
//! the server parses them: never a panic, and every request the server
//! would act on stays inside the export and its limits.
//!
//! Input layout: byte 0 picks the export size (low bits) and whether the
//! stream starts at the handshake or directly in transmission (high bit);
//! the rest is the byte stream from the client.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker::nbd::protocol::{
    Action, ClientOption, OPTION_HEADER_LEN, REQUEST_LEN, check_request, encode_export_name_reply,
    encode_info_block_size, encode_option_reply, encode_simple_reply, parse_client_flags,
    parse_option, parse_option_header, parse_request,
};

const SIZES: [u64; 6] = [0, 1, 4096, 5 << 20, 1 << 40, u64::MAX];
const MAX_PAYLOAD: u32 = 32 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let size = SIZES[usize::from(sel & 0x7f) % SIZES.len()];
    if sel & 0x80 == 0 {
        // Handshake: client flags, then options until one enters transmission.
        if parse_client_flags(rest).is_err() {
            return;
        }
        rest = &rest[4..];
        loop {
            let Ok(h) = parse_option_header(rest) else {
                return;
            };
            rest = &rest[OPTION_HEADER_LEN..];
            let len = h.length as usize;
            if rest.len() < len {
                return;
            }
            let (payload, r) = rest.split_at(len);
            rest = r;
            match parse_option(h.option, payload) {
                Ok(ClientOption::ExportName(name)) => {
                    assert_eq!(name, payload);
                    let _ = encode_export_name_reply(size, 0, sel & 1 == 0);
                    break;
                }
                Ok(ClientOption::Go(req)) => {
                    assert_eq!(4 + req.name.len() + 2 + 2 * req.requests.len(), payload.len());
                    let _ = encode_info_block_size(1, 512 << 10, MAX_PAYLOAD);
                    break;
                }
                Ok(ClientOption::Info(req)) => {
                    assert_eq!(4 + req.name.len() + 2 + 2 * req.requests.len(), payload.len());
                }
                Ok(_) => {}
                Err(why) => {
                    let _ = encode_option_reply(h.option, 1 << 31, why.as_bytes());
                }
            }
        }
    }
    // Transmission: request headers, with write payloads skipped.
    while let Ok(req) = parse_request(rest) {
        rest = &rest[REQUEST_LEN..];
        let _ = encode_simple_reply(0, req.cookie);
        match check_request(&req, size, MAX_PAYLOAD) {
            Action::Read { offset, length } => {
                assert!(length <= MAX_PAYLOAD);
                assert!(offset.checked_add(u64::from(length)).is_some_and(|e| e <= size));
            }
            Action::Cache { offset, length } => {
                assert!(offset.checked_add(u64::from(length)).is_some_and(|e| e <= size));
            }
            Action::DiscardThenReply { discard, .. } => {
                assert!(discard <= MAX_PAYLOAD);
                let Some(r) = rest.get(discard as usize..) else {
                    return;
                };
                rest = r;
            }
            Action::Reply(_) => {}
            Action::Disconnect | Action::Close { .. } => return,
        }
    }
});
