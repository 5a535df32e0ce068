//! The character rules of EIP-4361 and RFC 3986 that message fields must follow. URIs and the
//! domain (an RFC 3986 authority) are checked by fluent-uri's strict RFC 3986 parser.

use fluent_uri::Uri;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn is_gen_delim(b: u8) -> bool {
    matches!(b, b':' | b'/' | b'?' | b'#' | b'[' | b']' | b'@')
}

/// RFC 3986 `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
pub fn scheme(text: &str) -> Result<(), String> {
    let mut bytes = text.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) {
        Ok(())
    } else {
        Err("a scheme is a letter, then letters, digits, \"+\", \"-\" or \".\"".into())
    }
}

/// `statement = *( reserved / unreserved / " " )`: printable ASCII without <, >, {, }, |, `, ^, \ or ".
pub fn statement(text: &str) -> Result<(), String> {
    match text
        .bytes()
        .position(|b| !(is_unreserved(b) || is_sub_delim(b) || is_gen_delim(b) || b == b' '))
    {
        None => Ok(()),
        Some(at) => Err(format!(
            "character {} is not allowed in a statement",
            describe(text, at)
        )),
    }
}

/// RFC 3986 `URI` (absolute, with a scheme).
pub fn uri(text: &str) -> Result<(), String> {
    let text = leading_zero_octets_written_plainly(text);
    Uri::parse(text.as_ref())
        .map(|_| ())
        .map_err(|e| format!("not an RFC 3986 URI ({e})"))
}

/// EIP-4361's grammar accepts an IPv4 part of an IPv6 literal with zero-padded octets
/// (`[::001.099.200.255]`), in a URI and in the domain alike; RFC 3986's dec-octet does not.
/// Such octets are written plainly before the strict parse; anything else (256, hex, empty
/// octets) is left for it to refuse.
fn leading_zero_octets_written_plainly(uri: &str) -> std::borrow::Cow<'_, str> {
    let literal = uri.split_once("://").and_then(|(_, rest)| {
        let open = rest.find('[')?;
        let close = open + rest[open..].find(']')?;
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        (close < authority_end).then(|| (uri.len() - rest.len() + open + 1, &rest[open + 1..close]))
    });
    let Some((start, literal)) = literal else {
        return uri.into();
    };
    let Some((head, quad)) = literal.rsplit_once(':') else {
        return uri.into();
    };
    let octets: Vec<&str> = quad.split('.').collect();
    let padded = octets.len() == 4
        && octets
            .iter()
            .all(|o| (1..=3).contains(&o.len()) && o.bytes().all(|b| b.is_ascii_digit()))
        && octets.iter().any(|o| o.len() > 1 && o.starts_with('0'));
    let values: Option<Vec<u8>> = octets.iter().map(|o| o.parse::<u8>().ok()).collect();
    match values {
        Some(values) if padded => {
            let plain: Vec<String> = values.iter().map(u8::to_string).collect();
            let end = start + literal.len();
            format!("{}{head}:{}{}", &uri[..start], plain.join("."), &uri[end..]).into()
        }
        _ => uri.into(),
    }
}

/// RFC 3986 `authority` with a host: `[ userinfo "@" ] host [ ":" port ]`. RFC 3986 lets the
/// host be empty (`:80`, `user@`); a domain that names no host is refused.
pub fn authority(text: &str) -> Result<(), String> {
    let invalid = || "not an RFC 3986 authority ([userinfo@]host[:port])".to_string();
    let probe = format!("x://{text}");
    let probe = leading_zero_octets_written_plainly(&probe);
    let parsed = Uri::parse(probe.as_ref()).map_err(|_| invalid())?;
    let authority = parsed.authority().ok_or_else(invalid)?;
    let whole = authority.as_str() == &probe["x://".len()..]
        && parsed.path().as_str().is_empty()
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if whole && !authority.host().is_empty() {
        Ok(())
    } else {
        Err(invalid())
    }
}

/// `chain-id = 1*DIGIT`, within PostgreSQL's bigint.
pub fn chain_id(text: &str) -> Result<i64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a chain id is decimal digits".into());
    }
    text.parse::<i64>()
        .map_err(|_| "chain id larger than 9223372036854775807".into())
}

/// `nonce = 8*( ALPHA / DIGIT )`.
pub fn nonce(text: &str) -> Result<(), String> {
    if text.len() >= 8 && text.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err("a nonce is at least 8 letters or digits".into())
    }
}

/// `request-id = *pchar`.
pub fn request_id(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let b = bytes[at];
        if b == b'%' {
            let escape = bytes.get(at + 1..at + 3);
            if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                return Err(format!("\"%\" at {} does not start a %XX escape", at + 1));
            }
            at += 3;
        } else if is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@' {
            at += 1;
        } else {
            return Err(format!(
                "character {} is not allowed in a request id",
                describe(text, at)
            ));
        }
    }
    Ok(())
}

/// "'<' at 7" for messages; a non-ASCII byte is described by its position only.
pub fn describe(text: &str, at: usize) -> String {
    match text.as_bytes()[at] {
        b if b.is_ascii_graphic() => format!("'{}' at {}", char::from(b), at + 1),
        b => format!("0x{b:02x} at {}", at + 1),
    }
}
