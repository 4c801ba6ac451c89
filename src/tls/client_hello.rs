//! Reading the server name (SNI) from a TLS ClientHello without terminating TLS, for
//! passthrough listeners (RFC 8446 section 4.1.2, RFC 6066 section 3).

/// What a peek at the first bytes of a connection says.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed; at least this many in total.
    Incomplete(usize),
    /// A ClientHello, with the server name if the client sent one.
    Parsed(Option<String>),
    /// Not a TLS ClientHello.
    NotTls,
}

/// The most bytes of a connection's opening this reads for its ClientHello: two full TLS
/// records. A ClientHello is nearly always one record; a client may split it over several
/// (RFC 8446, section 5.1), small ones included.
pub const MAX_HELLO: usize = 2 * (5 + 16_384);

/// Parses the ClientHello at the start of a connection, over as many handshake records as it
/// takes.
pub fn parse(buf: &[u8]) -> Hello {
    // The handshake message, put together when it spans records (kept apart otherwise).
    let mut joined = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            return Hello::Incomplete(at + 5);
        };
        // Record header: content type 22 (handshake), legacy version 3.x, length (never 0
        // for a handshake record).
        if header[0] != 22 || header[1] != 3 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Hello::NotTls;
        }
        let end = at + 5 + len;
        let Some(fragment) = buf.get(at + 5..end) else {
            return Hello::Incomplete(end);
        };
        let message = if at == 0 {
            fragment
        } else {
            joined.extend_from_slice(fragment);
            &joined[..]
        };
        match message_len(message) {
            Some(total) if total <= message.len() => {
                return match server_name(&message[..total]) {
                    Some(name) => Hello::Parsed(name),
                    None => Hello::NotTls,
                };
            }
            _ if end >= MAX_HELLO => return Hello::NotTls,
            _ => {
                if at == 0 {
                    joined.extend_from_slice(fragment);
                }
                at = end;
            }
        }
    }
}

/// The length of the handshake message that `bytes` begins (type, 3-byte length, body), once
/// its header is there.
fn message_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..4)?;
    Some(
        4 + ((usize::from(header[1]) << 16)
            | (usize::from(header[2]) << 8)
            | usize::from(header[3])),
    )
}

/// A cursor over a byte slice that fails softly.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// `Some(None)`: a ClientHello without SNI; `None`: not a well-formed ClientHello.
fn server_name(handshake: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(handshake);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let body_len = r.u24()?;
    let mut r = Reader(r.take(body_len)?);
    r.take(2 + 32)?; // legacy_version, random
    let session_id = r.u8()?;
    r.take(session_id)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let extensions_len = r.u16()?;
    let mut ext = Reader(r.take(extensions_len)?);
    while !ext.0.is_empty() {
        let kind = ext.u16()?;
        let len = ext.u16()?;
        let data = ext.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut names = Reader(data);
        let list_len = names.u16()?;
        let mut names = Reader(names.take(list_len)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name_len = names.u16()?;
            let name = names.take(name_len)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello carrying `name` as SNI.
    fn hello(name: &str) -> Vec<u8> {
        let mut sni = Vec::new();
        sni.extend((name.len() as u16 + 3).to_be_bytes());
        sni.push(0);
        sni.extend((name.len() as u16).to_be_bytes());
        sni.extend(name.as_bytes());
        let mut ext = Vec::new();
        ext.extend(0u16.to_be_bytes());
        ext.extend((sni.len() as u16).to_be_bytes());
        ext.extend(sni);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend(2u16.to_be_bytes());
        body.extend([0x13, 0x01]);
        body.extend([1, 0]); // compression
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![22, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn reads_the_server_name() {
        assert_eq!(
            parse(&hello("Abc.Example.com")),
            Hello::Parsed(Some("abc.example.com".into()))
        );
    }

    #[test]
    fn asks_for_more_bytes_when_the_record_is_cut() {
        let h = hello("a.example");
        assert_eq!(parse(&h[..10]), Hello::Incomplete(h.len()));
    }

    /// A ClientHello split over several handshake records, as RFC 8446 allows, is read whole;
    /// while its last record is missing, more bytes are asked for.
    #[test]
    fn reads_a_client_hello_split_over_records() {
        let whole = hello("split.example");
        let message = &whole[5..];
        for piece in [1, 7, 40] {
            let mut records = Vec::new();
            for chunk in message.chunks(piece) {
                records.extend([22, 3, 1]);
                records.extend((chunk.len() as u16).to_be_bytes());
                records.extend(chunk);
            }
            assert_eq!(
                parse(&records),
                Hello::Parsed(Some("split.example".into())),
                "{piece}-byte records"
            );
            let cut = records.len() - 2;
            assert!(
                matches!(parse(&records[..cut]), Hello::Incomplete(n) if n > cut),
                "{piece}-byte records, cut"
            );
        }
        // A record of another kind in between is not a ClientHello.
        let mut mixed = vec![22, 3, 1, 0, 10];
        mixed.extend(&message[..10]);
        mixed.extend([23, 3, 3, 0, 1, 0]);
        assert_eq!(parse(&mixed), Hello::NotTls);
    }

    #[test]
    fn plain_http_is_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
    }

    #[test]
    fn garbage_inside_a_record_is_not_tls() {
        // A handshake message of another type (2, a ServerHello).
        let mut h = hello("a.example");
        h[5] = 2;
        assert_eq!(parse(&h), Hello::NotTls);
        // A ClientHello whose extensions run past its end.
        let mut h = hello("a.example");
        let last = h.len() - 1;
        h.truncate(last);
        h[3..5].copy_from_slice(&((last - 5) as u16).to_be_bytes());
        let body = (last - 9) as u32;
        h[6..9].copy_from_slice(&body.to_be_bytes()[1..]);
        assert_eq!(parse(&h), Hello::NotTls);
    }
}
