//! The protobuf text format of `core.Secret`, as Go's `proto.MarshalTextString` writes it.
//!
//! The parser accepts every spelling the text format allows for this message: fields in any order,
//! any whitespace (Go's encoder randomly doubles spaces), `#` comments, `,`/`;` separators,
//! single or double quotes, adjacent string literals, C escapes, and enums by name or number.

use std::fmt;

use crate::secret::{MountRequirement, Secret};

/// Why a descriptor could not be read. `offset` is a byte offset into the decoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextError {
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for TextError {}

/// Parses one `core.Secret` in text format.
pub fn parse(text: &str) -> Result<Secret, TextError> {
    Parser {
        text: text.as_bytes(),
        pos: 0,
    }
    .secret()
}

/// Prints a `core.Secret` as Go's `proto.MarshalTextString` does: one `name: value` line per
/// non-default field, in field-number order.
pub fn print(secret: &Secret) -> String {
    let mut out = String::new();
    for (name, value) in [
        ("group", &secret.group),
        ("group_version", &secret.group_version),
        ("key", &secret.key),
    ] {
        if !value.is_empty() {
            push_string_field(&mut out, name, value);
        }
    }
    if secret.mount_requirement != MountRequirement::Any {
        out.push_str("mount_requirement: ");
        out.push_str(secret.mount_requirement.name());
        out.push('\n');
    }
    if !secret.env_var.is_empty() {
        push_string_field(&mut out, "env_var", &secret.env_var);
    }
    out
}

fn push_string_field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": \"");
    for byte in value.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            // Go escapes every byte outside printable ASCII as octal, UTF-8 included.
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\{byte:03o}")),
        }
    }
    out.push_str("\"\n");
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Group,
    GroupVersion,
    Key,
    MountRequirement,
    EnvVar,
}

impl Field {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "group" => Some(Self::Group),
            "group_version" => Some(Self::GroupVersion),
            "key" => Some(Self::Key),
            "mount_requirement" => Some(Self::MountRequirement),
            // `env_name` was the field's first name (2025) before it became `env_var`.
            "env_var" | "env_name" => Some(Self::EnvVar),
            _ => None,
        }
    }
}

impl<'a> Parser<'a> {
    fn secret(mut self) -> Result<Secret, TextError> {
        let mut secret = Secret::default();
        let mut seen: Vec<Field> = Vec::with_capacity(5);
        loop {
            self.skip_blank();
            if self.pos == self.text.len() {
                return Ok(secret);
            }
            let start = self.pos;
            let name = self.identifier()?;
            let field = Field::from_name(name)
                .ok_or_else(|| self.error_at(start, format!("unknown field {name:?}")))?;
            if seen.contains(&field) {
                return Err(self.error_at(start, format!("field {name:?} appears twice")));
            }
            seen.push(field);
            self.skip_blank();
            self.expect(b':')?;
            self.skip_blank();
            match field {
                Field::Group => secret.group = self.string()?,
                Field::GroupVersion => secret.group_version = self.string()?,
                Field::Key => secret.key = self.string()?,
                Field::EnvVar => secret.env_var = self.string()?,
                Field::MountRequirement => secret.mount_requirement = self.mount_requirement()?,
            }
            self.skip_blank();
            if matches!(self.peek(), Some(b',' | b';')) {
                self.pos += 1;
            }
        }
    }

    fn error_at(&self, offset: usize, reason: String) -> TextError {
        TextError { offset, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_blank(&mut self) {
        while let Some(byte) = self.peek() {
            match byte {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => self.pos += 1,
                b'#' => {
                    while !matches!(self.peek(), None | Some(b'\n')) {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn expect(&mut self, wanted: u8) -> Result<(), TextError> {
        match self.peek() {
            Some(byte) if byte == wanted => {
                self.pos += 1;
                Ok(())
            }
            Some(byte) => Err(self.error_at(
                self.pos,
                format!("expected {:?}, found {:?}", wanted as char, byte as char),
            )),
            None => Err(self.error_at(
                self.pos,
                format!("expected {:?}, found the end", wanted as char),
            )),
        }
    }

    fn identifier(&mut self) -> Result<&'a str, TextError> {
        let start = self.pos;
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_')
        ) {
            self.pos += 1;
        }
        if start == self.pos || self.text[start].is_ascii_digit() {
            return Err(self.error_at(start, "expected a field name".to_owned()));
        }
        let text: &'a [u8] = self.text;
        // Only ASCII was consumed, so this cannot fail.
        std::str::from_utf8(&text[start..self.pos])
            .map_err(|_| self.error_at(start, "expected a field name".to_owned()))
    }

    fn mount_requirement(&mut self) -> Result<MountRequirement, TextError> {
        let start = self.pos;
        if matches!(self.peek(), Some(b'0'..=b'9')) {
            let number = self.integer()?;
            return MountRequirement::from_number(number).ok_or_else(|| {
                self.error_at(start, format!("invalid mount requirement [{number}]"))
            });
        }
        let name = self.identifier()?;
        MountRequirement::from_name(name)
            .ok_or_else(|| self.error_at(start, format!("invalid mount requirement [{name}]")))
    }

    fn integer(&mut self) -> Result<u64, TextError> {
        let start = self.pos;
        let (radix, digits_start) =
            if self.text[start..].starts_with(b"0x") || self.text[start..].starts_with(b"0X") {
                (16, start + 2)
            } else if self.text[start] == b'0' && self.text.len() > start + 1 {
                (8, start)
            } else {
                (10, start)
            };
        self.pos = digits_start;
        while matches!(self.peek(), Some(byte) if byte.is_ascii_alphanumeric()) {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.text[digits_start..self.pos]).unwrap_or("");
        u64::from_str_radix(digits, radix)
            .map_err(|_| self.error_at(start, "invalid number".to_owned()))
    }

    /// One or more adjacent string literals, concatenated.
    fn string(&mut self) -> Result<String, TextError> {
        let start = self.pos;
        if !matches!(self.peek(), Some(b'"' | b'\'')) {
            return Err(self.error_at(start, "expected a quoted string".to_owned()));
        }
        let mut bytes = Vec::new();
        while let Some(quote @ (b'"' | b'\'')) = self.peek() {
            self.pos += 1;
            self.literal_body(quote, &mut bytes)?;
            self.skip_blank();
        }
        String::from_utf8(bytes).map_err(|_| self.error_at(start, "string is not UTF-8".to_owned()))
    }

    fn literal_body(&mut self, quote: u8, out: &mut Vec<u8>) -> Result<(), TextError> {
        loop {
            let Some(byte) = self.peek() else {
                return Err(self.error_at(self.pos, "unterminated string".to_owned()));
            };
            self.pos += 1;
            match byte {
                _ if byte == quote => return Ok(()),
                b'\n' => return Err(self.error_at(self.pos - 1, "newline in string".to_owned())),
                b'\\' => self.escape(out)?,
                _ => out.push(byte),
            }
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), TextError> {
        let at = self.pos - 1;
        let Some(byte) = self.peek() else {
            return Err(self.error_at(at, "unterminated escape".to_owned()));
        };
        self.pos += 1;
        let simple = match byte {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' | b'\'' | b'"' | b'?' => Some(byte),
            _ => None,
        };
        if let Some(simple) = simple {
            out.push(simple);
            return Ok(());
        }
        match byte {
            b'0'..=b'7' => {
                let mut value = u32::from(byte - b'0');
                for _ in 0..2 {
                    match self.peek() {
                        Some(digit @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(digit - b'0');
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                let value = u8::try_from(value)
                    .map_err(|_| self.error_at(at, "octal escape above \\377".to_owned()))?;
                out.push(value);
            }
            b'x' | b'X' => {
                let value = self.hex_digits(at, 1, 2)?;
                out.push(value as u8);
            }
            b'u' | b'U' => {
                let width = if byte == b'u' { 4 } else { 8 };
                let value = self.hex_digits(at, width, width)?;
                let ch = char::from_u32(value).ok_or_else(|| {
                    self.error_at(at, "escape is not a Unicode scalar".to_owned())
                })?;
                let mut buf = [0; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            _ => {
                return Err(self.error_at(at, format!("unknown escape \\{}", byte as char)));
            }
        }
        Ok(())
    }

    fn hex_digits(&mut self, at: usize, min: usize, max: usize) -> Result<u32, TextError> {
        let mut value = 0u32;
        let mut count = 0;
        while count < max {
            let Some(digit) = self.peek().and_then(|b| (b as char).to_digit(16)) else {
                break;
            };
            value = value * 16 + digit;
            self.pos += 1;
            count += 1;
        }
        if count < min {
            return Err(self.error_at(at, "incomplete hex escape".to_owned()));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(group: &str, key: &str) -> Secret {
        Secret {
            group: group.into(),
            key: key.into(),
            ..Secret::default()
        }
    }

    #[test]
    fn reads_go_output_with_doubled_spaces_any_order_and_separators() {
        let want = Secret {
            group: "g".into(),
            group_version: "v1".into(),
            key: "k".into(),
            mount_requirement: MountRequirement::File,
            env_var: "E".into(),
        };
        for text in [
            "group: \"g\"\ngroup_version: \"v1\"\nkey: \"k\"\nmount_requirement: FILE\nenv_var: \"E\"\n",
            "key:  \"k\" group:\"g\",mount_requirement:2;env_var:'E' group_version : \"v\" '1'",
            "# a comment\n env_name: \"E\" mount_requirement: 0x2 key: \"k\" group: \"\\147\" group_version: \"v1\"",
        ] {
            assert_eq!(parse(text), Ok(want.clone()), "{text:?}");
        }
    }

    #[test]
    fn reads_every_escape() {
        let parsed = parse(r#"key: "\a\b\f\n\r\t\v\\\'\"\?\101\x42\u00e9\U0001F600""#).unwrap();
        assert_eq!(parsed.key, "\x07\x08\x0c\n\r\t\x0b\\'\"?AB\u{e9}\u{1F600}");
    }

    #[test]
    fn octal_utf8_bytes_form_one_character() {
        assert_eq!(parse(r#"key: "\303\251""#).unwrap().key, "é");
    }

    #[test]
    fn empty_text_is_the_default_secret() {
        assert_eq!(parse("  \n"), Ok(Secret::default()));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for (text, reason) in [
            ("key \"k\"", "expected ':'"),
            ("key: k", "expected a quoted string"),
            ("key: \"k", "unterminated string"),
            ("colour: \"red\"", "unknown field \"colour\""),
            ("key: \"a\" key: \"b\"", "appears twice"),
            (
                "mount_requirement: SOMETIMES",
                "invalid mount requirement [SOMETIMES]",
            ),
            ("mount_requirement: 7", "invalid mount requirement [7]"),
            ("key: \"\\q\"", "unknown escape"),
            ("key: \"\\400\"", "octal escape"),
            ("key: \"\\377\"", "not UTF-8"),
            ("key: \"\\x\"", "incomplete hex"),
            ("key: \"\\ud800\"", "not a Unicode scalar"),
            ("key: \"a\nb\"", "newline in string"),
            ("3key: \"k\"", "expected a field name"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.reason.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn prints_like_go() {
        assert_eq!(print(&secret("", "my_key")), "key: \"my_key\"\n");
        assert_eq!(print(&secret(";':/\\", "")), "group: \";':/\\\\\"\n");
        let full = Secret {
            group: "g".into(),
            group_version: "v".into(),
            key: "k\t\"é".into(),
            mount_requirement: MountRequirement::EnvVar,
            env_var: "E".into(),
        };
        assert_eq!(
            print(&full),
            "group: \"g\"\ngroup_version: \"v\"\nkey: \"k\\t\\\"\\303\\251\"\nmount_requirement: ENV_VAR\nenv_var: \"E\"\n"
        );
        assert_eq!(parse(&print(&full)), Ok(full));
    }
}
