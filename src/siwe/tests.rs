//! The public EIP-4361 conformance vectors (../shared/siwe-vectors), run as they are, plus the
//! contract's verification policy where it goes beyond them.

use super::*;
use serde_json::{Map, Value};
use std::path::PathBuf;

fn vectors_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IDENTITY_SIWE_VECTORS") {
        return PathBuf::from(dir);
    }
    // Beside the clone cargo runs the tests from, not the one they were compiled in: clones
    // that share a target directory share test binaries, and the compiling clone may be gone.
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    package.join("../shared/siwe-vectors")
}

/// Every case of a vector file in both upstream sets, named "set/file: case".
fn cases(file: &str) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    for set in ["spruceid-siwe", "signinwithethereum-siwe"] {
        let path = vectors_dir().join(set).join(file);
        if set == "spruceid-siwe" && !path.exists() {
            continue; // the older set lacks the grammar-level files
        }
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cases: Map<String, Value> = serde_json::from_str(&text).unwrap();
        all.extend(
            cases
                .into_iter()
                .map(|(name, case)| (format!("{set}/{file}: {name}"), case)),
        );
    }
    assert!(!all.is_empty(), "no cases in {file}");
    all
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value}"))
}

/// An address with no checksum to check: the contract accepts it (newer vectors agree).
fn is_single_case_address(address: &str) -> bool {
    let digits = &address[2.min(address.len())..];
    digits == digits.to_ascii_lowercase() || digits == digits.to_ascii_uppercase()
}

#[test]
fn parsing_positive_vectors_parse_to_their_fields_and_print_back_exactly() {
    for (name, case) in cases("parsing_positive.json") {
        let message = text(&case["message"]);
        let parsed = Message::parse(message).unwrap_or_else(|e| panic!("{name}: {e}"));
        let fields = &case["fields"];
        let optional = |key: &str| {
            fields
                .get(key)
                .filter(|v| !v.is_null())
                .map(|v| text(v).to_owned())
        };
        assert_eq!(parsed.scheme, optional("scheme"), "{name}");
        assert_eq!(parsed.domain, text(&fields["domain"]), "{name}");
        assert_eq!(parsed.address_text, text(&fields["address"]), "{name}");
        assert_eq!(parsed.statement, optional("statement"), "{name}");
        assert_eq!(parsed.uri, text(&fields["uri"]), "{name}");
        assert_eq!(parsed.version, text(&fields["version"]), "{name}");
        assert_eq!(Some(parsed.chain_id), fields["chainId"].as_i64(), "{name}");
        assert_eq!(parsed.nonce, text(&fields["nonce"]), "{name}");
        assert_eq!(parsed.issued_at.text, text(&fields["issuedAt"]), "{name}");
        assert_eq!(
            parsed.expiration_time.as_ref().map(|t| t.text.clone()),
            optional("expirationTime"),
            "{name}"
        );
        assert_eq!(
            parsed.not_before.as_ref().map(|t| t.text.clone()),
            optional("notBefore"),
            "{name}"
        );
        assert_eq!(parsed.request_id, optional("requestId"), "{name}");
        let resources = fields.get("resources").map(|list| {
            list.as_array()
                .unwrap()
                .iter()
                .map(|r| text(r).to_owned())
                .collect::<Vec<_>>()
        });
        assert_eq!(parsed.resources, resources, "{name}");
        assert_eq!(parsed.to_string(), message, "{name}: serializer round trip");
    }
}

#[test]
fn parsing_negative_vectors_do_not_parse_except_where_the_policy_supersedes_them() {
    let mut superseded = 0;
    for (name, case) in cases("parsing_negative.json") {
        let message = text(&case);
        let address = message.lines().nth(1).unwrap_or("");
        if name.ends_with("address not EIP-55") && is_single_case_address(address) {
            // Contract policy: an all-lowercase address carries no checksum and is accepted.
            assert!(Message::parse(message).is_ok(), "{name}");
            superseded += 1;
            continue;
        }
        let error = Message::parse(message).expect_err(&name);
        assert!(error.line >= 1, "{name}: {error}");
    }
    assert_eq!(
        superseded, 2,
        "exactly the two 'address not EIP-55' cases are superseded"
    );
}

/// The message a reference serializer builds from a field object; a missing required field is
/// written empty, so the text cannot parse.
fn message_from_object(fields: &Value) -> String {
    let field = |key: &str| {
        fields.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let required = |key: &str| field(key).unwrap_or_default();
    let mut out = format!(
        "{} wants you to sign in with your Ethereum account:\n{}\n\n",
        required("domain"),
        required("address")
    );
    if let Some(statement) = field("statement") {
        out.push_str(&format!("{statement}\n"));
    }
    out.push_str(&format!(
        "\nURI: {}\nVersion: {}\nChain ID: {}\nNonce: {}\nIssued At: {}",
        required("uri"),
        required("version"),
        required("chainId"),
        required("nonce"),
        required("issuedAt")
    ));
    for (key, tag) in [
        ("expirationTime", "Expiration Time"),
        ("notBefore", "Not Before"),
        ("requestId", "Request ID"),
    ] {
        if let Some(value) = field(key) {
            out.push_str(&format!("\n{tag}: {value}"));
        }
    }
    if let Some(resources) = fields.get("resources").and_then(Value::as_array) {
        out.push_str("\nResources:");
        for resource in resources {
            out.push_str(&format!("\n- {}", text(resource)));
        }
    }
    out
}

#[test]
fn message_object_vectors_parse_exactly_when_they_are_valid() {
    for (name, case) in cases("message_objects.json") {
        let message = message_from_object(&case["msg"]);
        let valid = text(&case["error"]) == "none"
            || (text(&case["error"]).contains("EIP-55")
                && is_single_case_address(text(&case["msg"]["address"])));
        assert_eq!(
            Message::parse(&message).is_ok(),
            valid,
            "{name}:\n{message}"
        );
    }
    for (name, case) in cases("parsing_negative_objects.json") {
        let message = message_from_object(&case);
        let superseded =
            name.ends_with("address not EIP-55") && is_single_case_address(text(&case["address"]));
        assert_eq!(
            Message::parse(&message).is_ok(),
            superseded,
            "{name}:\n{message}"
        );
    }
}

#[test]
fn uri_and_resource_vectors_agree_with_the_grammar() {
    for (name, case) in cases("valid_uris.json") {
        let parsed = Message::parse(text(&case["msg"])).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Each case states some components; the parsed URI carries every one stated.
        if let Some(scheme) = case["uri"]["scheme"].as_str() {
            assert!(parsed.uri.starts_with(&format!("{scheme}:")), "{name}");
        }
        if let Some(host) = case["uri"]["host"].as_str() {
            assert!(parsed.uri.contains(host), "{name}");
        }
    }
    for (name, case) in cases("invalid_uris.json") {
        let error = Message::parse(text(&case)).expect_err(&name);
        assert_eq!(error.field, "URI", "{name}: {error}");
    }
    for (name, case) in cases("valid_resources.json") {
        let parsed = Message::parse(text(&case["msg"])).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected: Vec<String> = case["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| text(r).to_owned())
            .collect();
        assert_eq!(parsed.resources, Some(expected), "{name}");
    }
    for (name, case) in cases("invalid_resources.json") {
        let error = Message::parse(text(&case)).expect_err(&name);
        assert_eq!(error.field, "Resources", "{name}: {error}");
    }
}

#[test]
fn specification_vectors_tell_absent_from_empty() {
    for (name, case) in cases("valid_specification.json") {
        let parsed = Message::parse(text(&case["msg"])).unwrap_or_else(|e| panic!("{name}: {e}"));
        let items = &case["items"];
        assert_eq!(
            parsed.statement.as_deref(),
            items["statement"].as_str(),
            "{name}"
        );
        assert_eq!(
            parsed.request_id.as_deref(),
            items["requestId"].as_str(),
            "{name}"
        );
        let resources = items["resources"]
            .as_array()
            .map(|list| list.iter().map(|r| text(r).to_owned()).collect::<Vec<_>>());
        assert_eq!(parsed.resources, resources, "{name}");
    }
}

/// Whether `input` matches one RFC 3986 / EIP-4361 character rule, tested where the rule lives.
fn rule_accepts(rule: &str, input: &str) -> bool {
    use fluent_uri::Uri;
    let parses_as = |uri: String, part: &dyn Fn(&Uri<&str>) -> Option<String>| {
        Uri::parse(uri.as_str())
            .ok()
            .and_then(|u| part(&u))
            .as_deref()
            == Some(input)
    };
    match rule {
        "scheme" => grammar::scheme(input).is_ok(),
        "statement" => grammar::statement(input).is_ok(),
        "pchar" | "pct-encoded" => grammar::request_id(input).is_ok(),
        "userinfo" => parses_as(format!("x://{input}@h"), &|u| {
            u.authority()
                .and_then(|a| a.userinfo())
                .map(|s| s.as_str().to_owned())
        }),
        "reg-name" => parses_as(format!("x://{input}"), &|u| {
            u.authority().map(|a| a.host().to_owned())
        }),
        "IPvFuture" => parses_as(format!("x://[{input}]"), &|u| {
            u.authority().map(|a| {
                a.host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            })
        }),
        "segment-nz" => parses_as(format!("x:{input}"), &|u| {
            Some(u.path().as_str().to_owned())
        }),
        "fragment" => parses_as(format!("x:#{input}"), &|u| {
            u.fragment().map(|f| f.as_str().to_owned())
        }),
        other => panic!("no check for rule {other}"),
    }
}

#[test]
fn character_rule_vectors_agree() {
    for file in ["valid_chars.json", "invalid_chars.json"] {
        for (name, case) in cases(file) {
            let answer = case["answer"].as_bool().unwrap();
            assert_eq!(
                rule_accepts(text(&case["rule"]), text(&case["input"])),
                answer,
                "{name}"
            );
        }
    }
}

fn derived_cases() -> Vec<Value> {
    let path = vectors_dir().join("verification_messages.derived.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all["cases"].as_array().unwrap().clone()
}

fn unix_nanos(rfc3339: &str) -> i128 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos())
        // Vectors check calendar validity by verifying *at* an impossible date; the message's own
        // Issued At is the same impossible date, so its parse fails first and time never matters.
        .unwrap_or(0)
}

/// The reason a derived verification case must be refused for, by the case's name.
fn expected_refusal(case: &Value, error: &VerifyError) -> bool {
    let name = text(&case["name"]);
    match name {
        "expired message" => matches!(error, VerifyError::Expired { .. }),
        "not yet valid" => matches!(error, VerifyError::NotYetValid { .. }),
        "domain binding" => matches!(error, VerifyError::DomainMismatch { .. }),
        "custom nonce" => matches!(error, VerifyError::NonceMismatch { .. }),
        "custom time" => matches!(error, VerifyError::Expired { .. }),
        "malformed signature" => {
            matches!(error, VerifyError::BadSignature(SignatureError::OddLength))
        }
        "wrong signature" => matches!(
            error,
            VerifyError::WrongSigner { .. } | VerifyError::BadSignature(_)
        ),
        "invalid issuedAt" | "invalid notBefore" | "invalid expirationTime" => {
            matches!(error, VerifyError::Malformed(_))
        }
        "argent" | "loopring" => error.to_string().contains("ERC-1271"),
        other => panic!("no expected refusal for {other}"),
    }
}

#[test]
fn every_verification_vector_is_accepted_or_refused_as_expected() {
    let (mut accepted, mut refused) = (0, 0);
    for case in derived_cases() {
        let name = format!("{}: {}", text(&case["source_file"]), text(&case["name"]));
        let expect = Expectations {
            domain: case.get("expected_domain").map(text),
            nonce: case.get("expected_nonce").map(text),
            at_unix_nanos: case
                .get("verify_time")
                .map(|t| unix_nanos(text(t)))
                .unwrap_or(0),
        };
        let outcome = verify(text(&case["message"]), text(&case["signature"]), &expect);
        if text(&case["expected"]) == "accept" {
            let message = outcome.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                message.address.to_string(),
                text(&case["address"]),
                "{name}"
            );
            accepted += 1;
        } else {
            let error = outcome.expect_err(&name);
            // An edited vector whose signature no longer recovers may be refused for that reason
            // first; an intact one must be refused for the reason it was written for.
            let intact = case["sig_recovers_to_address"].as_bool() == Some(true);
            assert!(
                !intact || expected_refusal(&case, &error),
                "{name}: refused as {error}"
            );
            if text(&case["name"]) == "argent" || text(&case["name"]) == "loopring" {
                assert!(expected_refusal(&case, &error), "{name}: {error}");
            }
            refused += 1;
        }
    }
    assert_eq!((accepted, refused), (8, 24));
}

// --- The contract's policy beyond the vectors -------------------------------------------------

/// The spruceid "example message": a real signature by 0x9D85…37D4.
fn example() -> (String, String, Expectations<'static>) {
    let case = derived_cases()
        .into_iter()
        .find(|c| text(&c["name"]) == "example message")
        .unwrap();
    let at = unix_nanos("2022-01-27T17:09:38.578Z");
    (
        text(&case["message"]).to_owned(),
        text(&case["signature"]).to_owned(),
        Expectations {
            domain: None,
            nonce: None,
            at_unix_nanos: at,
        },
    )
}

/// secp256k1's group order n, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

fn hex_bytes(hex: &str) -> Vec<u8> {
    let digits = hex.trim_start_matches("0x");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn signature_forms_that_ecrecover_accepts_are_accepted() {
    let (message, signature, expect) = example();
    let bytes = hex_bytes(&signature);
    let (r, s, v) = (&bytes[..32], &bytes[32..64], bytes[64]);
    // No 0x, upper case.
    assert!(verify(&message, &to_hex(&bytes).to_uppercase(), &expect).is_ok());
    // v as 0/1.
    let zero_based = format!("{}{}{:02x}", to_hex(r), to_hex(s), v - 27);
    assert!(verify(&message, &zero_based, &expect).is_ok());
    // EIP-2098 compact: the parity bit moves into the top bit of s.
    let mut compact_s = s.to_vec();
    compact_s[0] |= (v - 27) << 7;
    assert!(verify(
        &message,
        &format!("0x{}{}", to_hex(r), to_hex(&compact_s)),
        &expect
    )
    .is_ok());
    // High s: s' = n - s with the opposite parity recovers the same key.
    let mut high_s = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let difference = i16::from(ORDER[i]) - i16::from(s[i]) - borrow;
        high_s[i] = difference.rem_euclid(256) as u8;
        borrow = i16::from(difference < 0);
    }
    let flipped_v = if v == 27 { 28 } else { 27 };
    let high = format!("0x{}{}{flipped_v:02x}", to_hex(r), to_hex(&high_s));
    assert!(verify(&message, &high, &expect).is_ok(), "high-s refused");
}

#[test]
fn recovery_bytes_29_and_30_are_refused() {
    let (message, signature, expect) = example();
    let bytes = hex_bytes(&signature);
    for v in [29u8, 30, 2, 37] {
        let forged = format!("{}{v:02x}", to_hex(&bytes[..64]));
        assert_eq!(
            verify(&message, &forged, &expect),
            Err(VerifyError::BadSignature(SignatureError::BadRecoveryByte(
                v
            )))
        );
    }
}

#[test]
fn a_message_expires_at_its_expiration_time_not_after_it() {
    let (message, signature, _) = example();
    let expiration = unix_nanos("2100-01-07T14:31:43.952Z");
    let at = |at_unix_nanos| Expectations {
        domain: None,
        nonce: None,
        at_unix_nanos,
    };
    assert!(verify(&message, &signature, &at(expiration - 1)).is_ok());
    assert!(matches!(
        verify(&message, &signature, &at(expiration)),
        Err(VerifyError::Expired { .. })
    ));
}

#[test]
fn the_expected_domain_is_the_whole_authority_port_included() {
    let case = derived_cases()
        .into_iter()
        .find(|c| text(&c["name"]) == "argent")
        .unwrap();
    let message = text(&case["message"]);
    let parsed = Message::parse(message).unwrap();
    assert_eq!(parsed.domain, "localhost:4361");
    let expect = |domain| Expectations {
        domain: Some(domain),
        nonce: None,
        at_unix_nanos: 0,
    };
    for wrong in ["localhost", "localhost:4362", "LOCALHOST:4361"] {
        assert!(matches!(
            verify(message, text(&case["signature"]), &expect(wrong)),
            Err(VerifyError::DomainMismatch { .. })
        ));
    }
}

#[test]
fn the_grammar_is_strict_about_line_ends_and_extra_lines() {
    let (message, _, _) = example();
    let crlf = message.replace('\n', "\r\n");
    let trailing = format!("{message}\n");
    let unknown = message.replace("\nNonce:", "\nColour: blue\nNonce:");
    let repeated = format!("{message}\nExpiration Time: 2100-01-07T14:31:43.952Z");
    // The example has 11 lines; each error points at the first line that is wrong.
    for (what, text, line) in [
        ("CRLF", crlf, 1),
        ("trailing newline", trailing, 12),
        ("unknown field", unknown, 9),
        ("repeated field", repeated, 12),
    ] {
        let error = Message::parse(&text).expect_err(what);
        assert_eq!(error.line, line, "{what}: {error}");
    }
}

#[test]
fn hostile_inputs_get_clean_errors() {
    let (message, signature, expect) = example();
    let huge = format!("{message}{}", "a".repeat(1 << 20));
    assert!(matches!(
        verify(&huge, &signature, &expect),
        Err(VerifyError::Malformed(_))
    ));
    let with_nul = message.replacen("Example", "Exa\0mple", 1);
    assert!(matches!(
        verify(&with_nul, &signature, &expect),
        Err(VerifyError::Malformed(_))
    ));
    assert!(matches!(
        verify("", &signature, &expect),
        Err(VerifyError::Malformed(_))
    ));
    assert_eq!(
        verify(&message, "", &expect),
        Err(VerifyError::BadSignature(SignatureError::WrongLength(0)))
    );
    assert_eq!(
        verify(&message, "0x123", &expect),
        Err(VerifyError::BadSignature(SignatureError::OddLength))
    );
    assert_eq!(
        verify(&message, "0xzz", &expect),
        Err(VerifyError::BadSignature(SignatureError::NotHex))
    );
    let zeros = format!("0x{}1b", "00".repeat(64));
    assert_eq!(
        verify(&message, &zeros, &expect),
        Err(VerifyError::BadSignature(SignatureError::NotOnCurve))
    );
    let max = format!("0x{}1b", "ff".repeat(64));
    assert_eq!(
        verify(&message, &max, &expect),
        Err(VerifyError::BadSignature(SignatureError::NotOnCurve))
    );
}

#[test]
fn parse_errors_name_the_line_and_the_field() {
    let (message, _, _) = example();
    let error = Message::parse(&message.replace("Chain ID: 1", "Chain ID: one")).unwrap_err();
    assert_eq!((error.line, error.field), (8, "Chain ID"));
    let error = Message::parse(&message.replace("Version: 1", "Version: 2")).unwrap_err();
    assert_eq!((error.line, error.field), (7, "Version"));
}

#[test]
fn a_chain_id_with_leading_zeros_is_kept_as_written() {
    // Found by the fuzzer: the ABNF allows "05"; it means chain 5 and prints back as "05".
    let (message, _, _) = example();
    let padded = message.replace("Chain ID: 1", "Chain ID: 05");
    let parsed = Message::parse(&padded).unwrap();
    assert_eq!((parsed.chain_id, parsed.chain_id_text.as_str()), (5, "05"));
    assert_eq!(parsed.to_string(), padded);
}

#[test]
fn date_and_time_are_separated_by_t_as_rfc_3339s_grammar_says() {
    // Found by comparing with the reference parser: the time crate takes any one character
    // between date and time (even a digit), which every other EIP-4361 verifier refuses.
    let (message, _, _) = example();
    for (field, line, stamp) in [
        ("Issued At", 10, "2022-01-27T17:09:38.578Z"),
        ("Expiration Time", 11, "2100-01-07T14:31:43.952Z"),
    ] {
        for separator in [" ", "_", "0", "Z"] {
            let text = message.replace(stamp, &stamp.replacen('T', separator, 1));
            let error = Message::parse(&text).expect_err(separator);
            assert_eq!((error.line, error.field), (line, field), "{error}");
            assert!(error.reason.contains("separated by \"T\""), "{error}");
        }
        let lower = message.replace(stamp, &stamp.replacen('T', "t", 1));
        assert_eq!(Message::parse(&lower).unwrap().to_string(), lower);
    }
}

#[test]
fn a_leap_second_is_accepted_only_where_one_can_fall() {
    // RFC 3339: second 60 is a leap second, which UTC inserts only at the end of a month.
    let (message, _, _) = example();
    let issued = |stamp: &str| message.replace("2022-01-27T17:09:38.578Z", stamp);
    let leap = Message::parse(&issued("2016-12-31T23:59:60Z")).unwrap();
    let second_before = Message::parse(&issued("2016-12-31T23:59:59Z")).unwrap();
    assert!(leap.issued_at.unix_nanos > second_before.issued_at.unix_nanos);
    assert!(Message::parse(&issued("2016-12-31T15:59:60-08:00")).is_ok());
    for nowhere in [
        "2016-12-30T23:59:60Z",
        "2016-12-31T23:58:60Z",
        "2016-12-31T23:59:60+01:00",
    ] {
        let error = Message::parse(&issued(nowhere)).expect_err(nowhere);
        assert_eq!(error.field, "Issued At", "{nowhere}: {error}");
    }
}

#[test]
fn the_domain_takes_what_a_uri_authority_takes_and_names_a_host() {
    let (message, _, _) = example();
    let with_domain = |domain: &str| message.replacen("login.xyz", domain, 1);
    // Zero-padded octets in an IPv6 literal's IPv4 part: EIP-4361's grammar allows them, and the
    // URI line already took them; the domain refused them.
    for domain in [
        "[::001.002.003.004]",
        "[::ffff:010.0.0.1]:8080",
        "u:p@[::1]:443",
    ] {
        let parsed = Message::parse(&with_domain(domain)).expect(domain);
        assert_eq!(parsed.domain, domain);
        assert_eq!(parsed.to_string(), with_domain(domain));
    }
    for domain in [
        ":80",
        "user@",
        "user@:80",
        "[::1.2.3.]",
        "[::256.0.0.1]",
        "a b",
    ] {
        let error = Message::parse(&with_domain(domain)).expect_err(domain);
        assert_eq!(
            (error.line, error.field),
            (1, "domain"),
            "{domain}: {error}"
        );
    }
}
