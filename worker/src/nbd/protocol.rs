//! The NBD wire format: constants, pure parsers and encoders.
//!
//! Nothing here does I/O. The server reads fixed-size headers and payloads
//! from the socket and hands the bytes to these functions, so the parser
//! can be fuzzed with arbitrary bytes (`fuzz/fuzz_targets/nbd_parse.rs`)
//! and every decision about a request ([`check_request`]) is a pure
//! function too. Field layouts follow the NBD protocol document
//! (`doc/proto.md` of the reference implementation); all integers are
//! big-endian.

/// `"NBDMAGIC"`: first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `"IHAVEOPT"`: newstyle negotiation magic, also the option request magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can skip the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client wants no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag: always set.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_TRIM` is supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` is supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: several connections see one consistent export.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: `NBD_CMD_CACHE` is supported.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

/// The flags lode advertises: a read-only export that accepts `FLUSH` and
/// `CACHE` (a prefetch hint) and may be used over several connections at
/// once (nothing is ever written, so every connection sees the same bytes).
pub const TRANSMISSION_FLAGS: u16 =
    TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN | TFLAG_SEND_CACHE;

/// Option: enter transmission (old style, no error reply possible).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: abort negotiation.
pub const OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const OPT_LIST: u32 = 3;
/// Option: upgrade to TLS (not supported).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: structured replies (not supported).
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply: done.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// Option reply: one piece of export information.
pub const REP_INFO: u32 = 3;
/// Option reply error: unknown or unsupported option.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Option reply error: option refused by policy.
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// Option reply error: syntactically invalid option.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// Option reply error: no such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// Option reply error: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;

/// Information type: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Information type: canonical export name.
pub const INFO_NAME: u16 = 1;
/// Information type: human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Information type: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: do not punch holes (write zeroes).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: do not fragment (structured replies only).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flags a client may set without having negotiated extensions.
pub const KNOWN_CMD_FLAGS: u16 = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE;

/// Error code: operation not permitted (writes to a read-only export).
pub const EPERM: u32 = 1;
/// Error code: I/O error (a chunk could not be served).
pub const EIO: u32 = 5;
/// Error code: out of memory.
pub const ENOMEM: u32 = 12;
/// Error code: invalid argument (out of range, bad flags, unknown command).
pub const EINVAL: u32 = 22;
/// Error code: no space left (writes past the end).
pub const ENOSPC: u32 = 28;
/// Error code: operation not supported.
pub const ENOTSUP: u32 = 95;
/// Error code: the server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// Bytes of the server greeting (`NBDMAGIC`, `IHAVEOPT`, handshake flags).
pub const GREETING_LEN: usize = 18;
/// Bytes of an option request header.
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Longest string (export name, description) the protocol allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Longest option payload lode accepts: a name, a count and some
/// information requests fit easily; anything longer ends the connection.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

/// A client message that breaks the protocol. The connection that sent it
/// is closed; the server keeps serving others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A magic number was wrong.
    #[error("bad {what} magic 0x{got:x} (want 0x{want:x})")]
    BadMagic {
        /// Which message.
        what: &'static str,
        /// The magic received.
        got: u64,
        /// The magic expected.
        want: u64,
    },
    /// The client set flags the server did not offer.
    #[error("unknown client flags 0x{0:08x}")]
    UnknownClientFlags(u32),
    /// An option payload longer than [`MAX_OPTION_LEN`].
    #[error("option {option} announces {len} bytes of data (limit {max})")]
    OptionTooLong {
        /// The option code.
        option: u32,
        /// The announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A message ended early.
    #[error("truncated {what}: {got} bytes, need {need}")]
    Truncated {
        /// Which message.
        what: &'static str,
        /// Bytes available.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// Flags the client answered the greeting with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub fixed_newstyle: bool,
    /// `NBD_FLAG_C_NO_ZEROES`.
    pub no_zeroes: bool,
}

/// Parses the 4-byte client flags. Unknown bits are a protocol violation.
pub fn parse_client_flags(bytes: &[u8]) -> Result<ClientFlags, ParseError> {
    let flags = be_u32(bytes, 0, "client flags")?;
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ParseError::UnknownClientFlags(flags));
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// Header of an option request: the payload of `length` bytes follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option code (`NBD_OPT_*`).
    pub option: u32,
    /// Payload length, at most [`MAX_OPTION_LEN`].
    pub length: u32,
}

/// Parses a 16-byte option header (magic, option, length).
pub fn parse_option_header(bytes: &[u8]) -> Result<OptionHeader, ParseError> {
    let magic = be_u64(bytes, 0, "option header")?;
    if magic != IHAVEOPT {
        return Err(ParseError::BadMagic {
            what: "option",
            got: magic,
            want: IHAVEOPT,
        });
    }
    let option = be_u32(bytes, 8, "option header")?;
    let length = be_u32(bytes, 12, "option header")?;
    if length > MAX_OPTION_LEN {
        return Err(ParseError::OptionTooLong {
            option,
            len: length,
            max: MAX_OPTION_LEN,
        });
    }
    Ok(OptionHeader { option, length })
}

/// The payload of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name asked for (empty = default export).
    pub name: &'a [u8],
    /// Information types asked for (`NBD_INFO_*`).
    pub requests: Vec<u16>,
}

/// An option request, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientOption<'a> {
    /// `NBD_OPT_EXPORT_NAME`: the name is the whole payload.
    ExportName(&'a [u8]),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest<'a>),
    /// `NBD_OPT_GO`.
    Go(InfoRequest<'a>),
    /// Any other option (answered with `NBD_REP_ERR_UNSUP`).
    Unsupported(u32),
}

/// Decodes an option payload. `Err` carries a reason for an
/// `NBD_REP_ERR_INVALID` reply (the option is known but malformed); the
/// connection stays usable because the payload length was already known.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption<'_>, &'static str> {
    match option {
        OPT_EXPORT_NAME => Ok(ClientOption::ExportName(data)),
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST if data.is_empty() => Ok(ClientOption::List),
        OPT_LIST => Err("NBD_OPT_LIST carries no data"),
        OPT_INFO | OPT_GO => {
            let req = parse_info_request(data)?;
            Ok(if option == OPT_GO {
                ClientOption::Go(req)
            } else {
                ClientOption::Info(req)
            })
        }
        other => Ok(ClientOption::Unsupported(other)),
    }
}

fn parse_info_request(data: &[u8]) -> Result<InfoRequest<'_>, &'static str> {
    let name_len = be_u32(data, 0, "").map_err(|_| "missing export name length")? as usize;
    let rest = &data[4..];
    if name_len > rest.len() {
        return Err("export name longer than the option");
    }
    let (name, rest) = rest.split_at(name_len);
    let count = be_u16(rest, 0, "").map_err(|_| "missing information request count")?;
    let rest = &rest[2..];
    if rest.len() != usize::from(count) * 2 {
        return Err("information request count does not match the option length");
    }
    let requests = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest { name, requests })
}

/// A transmission command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `NBD_CMD_READ` (0).
    Read,
    /// `NBD_CMD_WRITE` (1); `length` bytes of payload follow the header.
    Write,
    /// `NBD_CMD_DISC` (2).
    Disc,
    /// `NBD_CMD_FLUSH` (3).
    Flush,
    /// `NBD_CMD_TRIM` (4).
    Trim,
    /// `NBD_CMD_CACHE` (5).
    Cache,
    /// `NBD_CMD_WRITE_ZEROES` (6).
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS` (7).
    BlockStatus,
    /// `NBD_CMD_RESIZE` (8).
    Resize,
    /// Anything else.
    Unknown(u16),
}

impl Command {
    fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Disc,
            3 => Self::Flush,
            4 => Self::Trim,
            5 => Self::Cache,
            6 => Self::WriteZeroes,
            7 => Self::BlockStatus,
            8 => Self::Resize,
            other => Self::Unknown(other),
        }
    }
}

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// The command.
    pub command: Command,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// Parses a 28-byte request header. Only the magic is checked here;
/// [`check_request`] decides what to do with the request.
pub fn parse_request(bytes: &[u8]) -> Result<Request, ParseError> {
    let magic = be_u32(bytes, 0, "request")?;
    if magic != REQUEST_MAGIC {
        return Err(ParseError::BadMagic {
            what: "request",
            got: u64::from(magic),
            want: u64::from(REQUEST_MAGIC),
        });
    }
    Ok(Request {
        flags: be_u16(bytes, 4, "request")?,
        command: Command::from_u16(be_u16(bytes, 6, "request")?),
        cookie: be_u64(bytes, 8, "request")?,
        offset: be_u64(bytes, 16, "request")?,
        length: be_u32(bytes, 24, "request")?,
    })
}

/// What the server does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read `length` bytes at `offset` (in range, bounded) and reply with them.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u32,
    },
    /// Fetch the range ahead of reads (`NBD_CMD_CACHE`), reply success.
    Cache {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u32,
    },
    /// Reply with this error (0 = success) and no payload.
    Reply(u32),
    /// Consume `discard` payload bytes, then reply with the error.
    DiscardThenReply {
        /// Payload bytes to skip.
        discard: u32,
        /// Error to reply with.
        error: u32,
    },
    /// Finish in-flight requests, then close (`NBD_CMD_DISC`).
    Disconnect,
    /// Protocol violation: optionally reply with the error, then close.
    Close {
        /// Error to reply with before closing, if the stream is still in sync.
        reply: Option<u32>,
        /// Why, for the log.
        reason: &'static str,
    },
}

/// Decides what to do with a request to a read-only export of
/// `export_size` bytes whose requests may carry at most `max_payload` bytes.
///
/// Guarantees: `Read` and `Cache` ranges lie inside the export and `Read`
/// lengths are at most `max_payload`; `DiscardThenReply` discards at most
/// `max_payload` bytes.
pub fn check_request(req: &Request, export_size: u64, max_payload: u32) -> Action {
    let in_range = req
        .offset
        .checked_add(u64::from(req.length))
        .is_some_and(|end| end <= export_size);
    match req.command {
        Command::Write if req.length > max_payload => Action::Close {
            reply: None,
            reason: "write payload longer than the maximum block size",
        },
        // Read-only export: refuse, but keep the stream in sync.
        Command::Write => Action::DiscardThenReply {
            discard: req.length,
            error: EPERM,
        },
        Command::Trim | Command::WriteZeroes | Command::Resize => Action::Reply(EPERM),
        Command::Disc => Action::Disconnect,
        Command::Unknown(_) => Action::Close {
            reply: Some(EINVAL),
            reason: "unknown command",
        },
        _ if req.flags & !KNOWN_CMD_FLAGS != 0 => Action::Reply(EINVAL),
        Command::Flush => Action::Reply(0),
        // Block status needs structured replies, which are not negotiated.
        Command::BlockStatus => Action::Reply(EINVAL),
        Command::Read | Command::Cache if !in_range => Action::Reply(EINVAL),
        Command::Read if req.length > max_payload => Action::Reply(EINVAL),
        Command::Read => Action::Read {
            offset: req.offset,
            length: req.length,
        },
        Command::Cache => Action::Cache {
            offset: req.offset,
            length: req.length,
        },
    }
}

/// The server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting() -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// An option reply: magic, option, reply type, length, data.
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// `NBD_INFO_EXPORT` payload: size and transmission flags.
pub fn encode_info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` payload.
pub fn encode_info_string(info: u16, s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + s.len());
    b.extend_from_slice(&info.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE` payload: minimum, preferred, maximum.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&min.to_be_bytes());
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&max.to_be_bytes());
    b
}

/// `NBD_REP_SERVER` payload: name length, name, description.
pub fn encode_rep_server(name: &str, description: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len() + description.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(description.as_bytes());
    b
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes
/// unless the client negotiated `NBD_FLAG_C_NO_ZEROES`.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.resize(b.len() + 124, 0);
    }
    b
}

/// Writes a simple reply header into the first [`SIMPLE_REPLY_LEN`] bytes of `out`.
pub fn write_simple_reply(out: &mut [u8; SIMPLE_REPLY_LEN], error: u32, cookie: u64) {
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
}

/// A simple reply header.
pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    write_simple_reply(&mut b, error, cookie);
    b
}

fn field<const N: usize>(
    bytes: &[u8],
    at: usize,
    what: &'static str,
) -> Result<[u8; N], ParseError> {
    bytes
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(ParseError::Truncated {
            what,
            got: bytes.len(),
            need: at + N,
        })
}

fn be_u16(bytes: &[u8], at: usize, what: &'static str) -> Result<u16, ParseError> {
    field(bytes, at, what).map(u16::from_be_bytes)
}

fn be_u32(bytes: &[u8], at: usize, what: &'static str) -> Result<u32, ParseError> {
    field(bytes, at, what).map(u32::from_be_bytes)
}

fn be_u64(bytes: &[u8], at: usize, what: &'static str) -> Result<u64, ParseError> {
    field(bytes, at, what).map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(cmd: u16, flags: u16, offset: u64, length: u32) -> Request {
        let mut b = Vec::new();
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&length.to_be_bytes());
        parse_request(&b).unwrap()
    }

    #[test]
    fn greeting_bytes() {
        let g = encode_greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
    }

    #[test]
    fn client_flags() {
        let f = parse_client_flags(&[0, 0, 0, 3]).unwrap();
        assert!(f.fixed_newstyle && f.no_zeroes);
        assert_eq!(
            parse_client_flags(&[0, 0, 0, 4]),
            Err(ParseError::UnknownClientFlags(4))
        );
        assert!(matches!(
            parse_client_flags(&[0, 0]),
            Err(ParseError::Truncated { need: 4, .. })
        ));
    }

    #[test]
    fn option_header_checks_magic_and_length() {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&OPT_GO.to_be_bytes());
        b.extend_from_slice(&10u32.to_be_bytes());
        assert_eq!(
            parse_option_header(&b).unwrap(),
            OptionHeader {
                option: OPT_GO,
                length: 10
            }
        );
        b[12..].copy_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        assert!(matches!(
            parse_option_header(&b),
            Err(ParseError::OptionTooLong { .. })
        ));
        b[0] ^= 1;
        assert!(matches!(
            parse_option_header(&b),
            Err(ParseError::BadMagic { .. })
        ));
    }

    #[test]
    fn go_payload() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        assert_eq!(
            parse_option(OPT_GO, &d),
            Ok(ClientOption::Go(InfoRequest {
                name: b"abc",
                requests: vec![INFO_BLOCK_SIZE, INFO_NAME]
            }))
        );
        // Count says 2 but only one request follows.
        assert!(parse_option(OPT_INFO, &d[..d.len() - 2]).is_err());
        // Name length past the end.
        assert!(parse_option(OPT_GO, &[0, 0, 1, 0, b'a']).is_err());
        assert!(parse_option(OPT_GO, &[0, 0]).is_err());
        assert!(parse_option(OPT_LIST, b"x").is_err());
        assert_eq!(
            parse_option(42, b"whatever"),
            Ok(ClientOption::Unsupported(42))
        );
    }

    #[test]
    fn request_actions() {
        let size = 10_000;
        let max = 4096;
        assert_eq!(
            check_request(&request(0, 0, 0, 4096), size, max),
            Action::Read {
                offset: 0,
                length: 4096
            }
        );
        // Exactly up to the end is fine, one byte past is EINVAL.
        assert!(matches!(
            check_request(&request(0, 0, 9000, 1000), size, max),
            Action::Read { .. }
        ));
        assert_eq!(
            check_request(&request(0, 0, 9001, 1000), size, max),
            Action::Reply(EINVAL)
        );
        assert_eq!(
            check_request(&request(0, 0, u64::MAX, 2), size, max),
            Action::Reply(EINVAL)
        );
        assert_eq!(
            check_request(&request(0, 0, 0, 4097), size, max),
            Action::Reply(EINVAL)
        );
        assert_eq!(
            check_request(&request(1, 0, 0, 100), size, max),
            Action::DiscardThenReply {
                discard: 100,
                error: EPERM
            }
        );
        assert!(matches!(
            check_request(&request(1, 0, 0, 1 << 30), size, max),
            Action::Close { reply: None, .. }
        ));
        assert_eq!(
            check_request(&request(4, 0, 0, 100), size, max),
            Action::Reply(EPERM)
        );
        assert_eq!(
            check_request(&request(6, 0, 0, 100), size, max),
            Action::Reply(EPERM)
        );
        assert_eq!(
            check_request(&request(3, 0, 0, 0), size, max),
            Action::Reply(0)
        );
        assert_eq!(
            check_request(&request(2, 0, 0, 0), size, max),
            Action::Disconnect
        );
        assert_eq!(
            check_request(&request(0, CMD_FLAG_DF, 0, 10), size, max),
            Action::Reply(EINVAL)
        );
        assert!(matches!(
            check_request(&request(99, 0, 0, 0), size, max),
            Action::Close {
                reply: Some(EINVAL),
                ..
            }
        ));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), opt in any::<u32>()) {
            let _ = parse_client_flags(&bytes);
            let _ = parse_option_header(&bytes);
            let _ = parse_option(opt, &bytes);
            let _ = parse_request(&bytes);
        }

        #[test]
        fn accepted_reads_are_in_range(cmd in 0u16..12, flags in any::<u16>(), offset in any::<u64>(),
                                       length in any::<u32>(), size in any::<u64>(), max in 1u32..(64 << 20)) {
            let req = Request { flags, command: Command::from_u16(cmd), cookie: 1, offset, length };
            match check_request(&req, size, max) {
                Action::Read { offset, length } => {
                    prop_assert!(offset + u64::from(length) <= size);
                    prop_assert!(length <= max);
                }
                Action::Cache { offset, length } => prop_assert!(offset + u64::from(length) <= size),
                Action::DiscardThenReply { discard, .. } => prop_assert!(discard <= max),
                _ => {}
            }
        }

        #[test]
        fn request_round_trip(flags in any::<u16>(), cmd in any::<u16>(), cookie in any::<u64>(),
                              offset in any::<u64>(), length in any::<u32>()) {
            let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
            b.extend_from_slice(&flags.to_be_bytes());
            b.extend_from_slice(&cmd.to_be_bytes());
            b.extend_from_slice(&cookie.to_be_bytes());
            b.extend_from_slice(&offset.to_be_bytes());
            b.extend_from_slice(&length.to_be_bytes());
            let r = parse_request(&b).unwrap();
            prop_assert_eq!((r.flags, r.cookie, r.offset, r.length), (flags, cookie, offset, length));
        }
    }
}
