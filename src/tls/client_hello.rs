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

/// The largest ClientHello record this reads (one TLS record).
pub const MAX_RECORD: usize = 5 + 16_384;

/// Parses the first TLS record of a connection.
pub fn parse(buf: &[u8]) -> Hello {
    if buf.len() < 5 {
        return Hello::Incomplete(5);
    }
    // Record header: content type 22 (handshake), legacy version 3.x, length.
    if buf[0] != 22 || buf[1] != 3 {
        return Hello::NotTls;
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() < 5 + len {
        return Hello::Incomplete(5 + len);
    }
    match server_name(&buf[5..5 + len]) {
        Some(name) => Hello::Parsed(name),
        None => Hello::NotTls,
    }
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

    #[test]
    fn plain_http_is_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
    }

    #[test]
    fn garbage_inside_a_record_is_not_tls() {
        let mut h = hello("a.example");
        let len = h.len();
        h.truncate(len - 4);
        h[3..5].copy_from_slice(&((len - 9) as u16).to_be_bytes());
        assert_eq!(parse(&h), Hello::NotTls);
    }
}
