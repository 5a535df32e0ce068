//! The EIP-4361 message: a strict parser for its ABNF and the serializer that inverts it.
//!
//! Strict means: LF line ends only, no trailing newline, every field in its place, no unknown
//! lines. A parse error names the line and the field, so a client knows exactly what to fix.

use super::grammar;
use crate::eip55::Address;
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const HEADER_SUFFIX: &str = " wants you to sign in with your Ethereum account:";

/// A timestamp as written in the message, with its instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    pub text: String,
    /// Nanoseconds since 1970-01-01T00:00:00Z: every digit the message may carry.
    pub unix_nanos: i128,
}

impl Timestamp {
    /// RFC 3339's `date-time`. The `time` crate takes any one character between the date and
    /// the time (RFC 3339's prose lets an application choose, say, a space); its ABNF, which
    /// EIP-4361 cites, has "T", case-insensitive as every ABNF string is. So a message every
    /// other verifier refuses is refused here too.
    fn parse(text: &str) -> Result<Timestamp, String> {
        let instant = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|e| format!("not an RFC 3339 date-time ({e})"))?;
        const SEPARATOR_AT: usize = "YYYY-MM-DD".len();
        if !matches!(text.as_bytes()[SEPARATOR_AT], b'T' | b't') {
            return Err(format!(
                "the date and the time are separated by \"T\", not by {}",
                grammar::describe(text, SEPARATOR_AT)
            ));
        }
        Ok(Timestamp {
            text: text.to_owned(),
            unix_nanos: instant.unix_timestamp_nanos(),
        })
    }
}

/// A parsed Sign-In with Ethereum message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub scheme: Option<String>,
    pub domain: String,
    pub address: Address,
    /// The address exactly as the message spells it (the signature covers this text).
    pub address_text: String,
    pub statement: Option<String>,
    pub uri: String,
    pub version: String,
    pub chain_id: i64,
    /// The chain id as written: the ABNF's `1*DIGIT` allows leading zeros, and the text is what
    /// was signed.
    pub chain_id_text: String,
    pub nonce: String,
    pub issued_at: Timestamp,
    pub expiration_time: Option<Timestamp>,
    pub not_before: Option<Timestamp>,
    pub request_id: Option<String>,
    /// `None`: no "Resources:" line; `Some(empty)`: the line with no resource under it.
    pub resources: Option<Vec<String>>,
}

/// Why a message does not parse: the 1-based line and the field it should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} ({}): {}", self.line, self.field, self.reason)
    }
}

/// Walks the message line by line; every accessor names the field it expects.
struct Lines<'a> {
    lines: Vec<&'a str>,
    next: usize,
}

impl<'a> Lines<'a> {
    fn error(&self, field: &'static str, reason: impl Into<String>) -> ParseError {
        ParseError {
            line: self.next.min(self.lines.len()) + 1,
            field,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<&'a str> {
        self.lines.get(self.next).copied()
    }

    fn take(&mut self, field: &'static str) -> Result<&'a str, ParseError> {
        let line = self
            .peek()
            .ok_or_else(|| self.error(field, "the message ends before this line"))?;
        self.next += 1;
        Ok(line)
    }

    fn take_empty(&mut self, field: &'static str) -> Result<(), ParseError> {
        match self.take(field)? {
            "" => Ok(()),
            _ => {
                self.next -= 1;
                Err(self.error(field, "expected an empty line"))
            }
        }
    }

    /// The value after `tag` on the next line.
    fn take_tagged(
        &mut self,
        tag: &'static str,
        field: &'static str,
    ) -> Result<&'a str, ParseError> {
        let line = self.take(field)?;
        line.strip_prefix(tag).ok_or_else(|| {
            self.next -= 1;
            self.error(field, format!("expected a line starting with \"{tag}\""))
        })
    }

    /// Like `take_tagged` for an optional line: `None` when the next line has another tag.
    fn take_optional(&mut self, tag: &'static str) -> Option<&'a str> {
        let value = self.peek()?.strip_prefix(tag)?;
        self.next += 1;
        Some(value)
    }

    /// Runs `check` on a value, turning its complaint into an error for the line just taken.
    fn checked<T>(
        &mut self,
        field: &'static str,
        check: Result<T, String>,
    ) -> Result<T, ParseError> {
        check.map_err(|reason| ParseError {
            line: self.next,
            field,
            reason,
        })
    }
}

impl Message {
    pub fn parse(text: &str) -> Result<Message, ParseError> {
        let mut lines = Lines {
            lines: text.split('\n').collect(),
            next: 0,
        };

        let header = lines.take("header")?;
        let origin = header
            .strip_suffix(HEADER_SUFFIX)
            .ok_or_else(|| ParseError {
                line: 1,
                field: "header",
                reason: format!("expected \"[scheme://]domain{HEADER_SUFFIX}\""),
            })?;
        let (scheme, domain) = match origin.split_once("://") {
            Some((scheme, domain)) => (Some(scheme), domain),
            None => (None, origin),
        };
        if let Some(scheme) = scheme {
            lines.checked("scheme", grammar::scheme(scheme))?;
        }
        lines.checked("domain", grammar::authority(domain))?;

        let address_text = lines.take("address")?;
        let address = lines.checked(
            "address",
            Address::parse(address_text).map_err(|e| e.to_string()),
        )?;
        lines.take_empty("blank line after the address")?;

        // "[ statement LF ] LF": no statement is two empty lines before "URI: ".
        let statement = match (lines.peek(), lines.lines.get(lines.next + 1)) {
            (Some(""), Some(after)) if after.starts_with("URI: ") => {
                lines.next += 1;
                None
            }
            _ => {
                let statement = lines.take("statement")?;
                lines.checked("statement", grammar::statement(statement))?;
                lines.take_empty("blank line after the statement")?;
                Some(statement.to_owned())
            }
        };

        let uri = lines.take_tagged("URI: ", "URI")?;
        lines.checked("URI", grammar::uri(uri))?;
        let version = lines.take_tagged("Version: ", "Version")?;
        let known_version = if version == "1" {
            Ok(())
        } else {
            Err("only version 1 exists".into())
        };
        lines.checked("Version", known_version)?;
        let chain_id_text = lines.take_tagged("Chain ID: ", "Chain ID")?;
        let chain_id = lines.checked("Chain ID", grammar::chain_id(chain_id_text))?;
        let nonce = lines.take_tagged("Nonce: ", "Nonce")?;
        lines.checked("Nonce", grammar::nonce(nonce))?;
        let issued_at = lines.take_tagged("Issued At: ", "Issued At")?;
        let issued_at = lines.checked("Issued At", Timestamp::parse(issued_at))?;

        let mut expiration_time = None;
        if let Some(text) = lines.take_optional("Expiration Time: ") {
            expiration_time = Some(lines.checked("Expiration Time", Timestamp::parse(text))?);
        }
        let mut not_before = None;
        if let Some(text) = lines.take_optional("Not Before: ") {
            not_before = Some(lines.checked("Not Before", Timestamp::parse(text))?);
        }
        let mut request_id = None;
        if let Some(text) = lines.take_optional("Request ID: ") {
            lines.checked("Request ID", grammar::request_id(text))?;
            request_id = Some(text.to_owned());
        }
        let mut resources = None;
        if lines.peek() == Some("Resources:") {
            lines.next += 1;
            let mut list = Vec::new();
            while let Some(line) = lines.peek() {
                let resource = line
                    .strip_prefix("- ")
                    .ok_or_else(|| lines.error("Resources", "expected \"- \" and a URI"))?;
                lines.next += 1;
                lines.checked("Resources", grammar::uri(resource))?;
                list.push(resource.to_owned());
            }
            resources = Some(list);
        }
        if let Some(line) = lines.peek() {
            let reason = if line.is_empty() && lines.next + 1 == lines.lines.len() {
                "the message ends with a newline".to_owned()
            } else {
                "unexpected line: a field out of order, unknown, or repeated".to_owned()
            };
            return Err(lines.error("end of message", reason));
        }

        Ok(Message {
            scheme: scheme.map(str::to_owned),
            domain: domain.to_owned(),
            address,
            address_text: address_text.to_owned(),
            statement,
            uri: uri.to_owned(),
            version: version.to_owned(),
            chain_id,
            chain_id_text: chain_id_text.to_owned(),
            nonce: nonce.to_owned(),
            issued_at,
            expiration_time,
            not_before,
            request_id,
            resources,
        })
    }
}

impl fmt::Display for Message {
    /// The EIP-4361 text: `Message::parse(&m.to_string()) == Ok(m)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(scheme) = &self.scheme {
            write!(f, "{scheme}://")?;
        }
        write!(
            f,
            "{}{HEADER_SUFFIX}\n{}\n\n",
            self.domain, self.address_text
        )?;
        if let Some(statement) = &self.statement {
            writeln!(f, "{statement}")?;
        }
        write!(
            f,
            "\nURI: {}\nVersion: {}\nChain ID: {}\nNonce: {}\nIssued At: {}",
            self.uri, self.version, self.chain_id_text, self.nonce, self.issued_at.text
        )?;
        if let Some(t) = &self.expiration_time {
            write!(f, "\nExpiration Time: {}", t.text)?;
        }
        if let Some(t) = &self.not_before {
            write!(f, "\nNot Before: {}", t.text)?;
        }
        if let Some(id) = &self.request_id {
            write!(f, "\nRequest ID: {id}")?;
        }
        if let Some(resources) = &self.resources {
            write!(f, "\nResources:")?;
            for resource in resources {
                write!(f, "\n- {resource}")?;
            }
        }
        Ok(())
    }
}
