//! HTML mail bodies to plain text: block elements become line breaks and
//! `<blockquote>` content becomes `> ` lines, so quoted replies can be told
//! apart from new text the same way as in plain-text mail.
//!
//! This is a tolerant scanner, not an HTML parser: it never fails, and
//! unbalanced or broken markup degrades to text rather than to an error.

/// Elements whose content is never shown.
const HIDDEN: [&str; 6] = ["head", "script", "style", "title", "template", "noscript"];

/// Elements that start and end a line of their own.
const BLOCKS: [&str; 26] = [
    "p", "div", "li", "tr", "table", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "section", "article", "header", "footer", "address", "center", "form", "fieldset",
    "body",
];

/// Converts an HTML document or fragment to plain text.
pub fn html_to_text(html: &str) -> String {
    let mut out = TextWriter::default();
    let bytes = html.as_bytes();
    let mut hidden: Option<String> = None;
    let mut pos = 0;
    while pos < bytes.len() {
        if bytes[pos] == b'<' && starts_tag(&bytes[pos + 1..]) {
            if html[pos..].starts_with("<!--") {
                pos = html[pos + 4..]
                    .find("-->")
                    .map_or(bytes.len(), |end| pos + 4 + end + 3);
                continue;
            }
            let Some(close) = tag_close(bytes, pos) else {
                // A tag that never closes hides the rest, as browsers do.
                break;
            };
            let tag = Tag::parse(&html[pos + 1..close]);
            pos = close + 1;
            if let Some(open) = &hidden {
                if tag.closing && &tag.name == open {
                    hidden = None;
                }
                continue;
            }
            out.tag(&tag, &mut hidden);
        } else {
            // Skip the first character, which may be a `<` that starts no tag.
            let from = pos + html[pos..].chars().next().map_or(1, char::len_utf8);
            let next = html[from..].find('<').map_or(bytes.len(), |i| from + i);
            if hidden.is_none() {
                out.text(&decode_entities(&html[pos..next]));
            }
            pos = next;
        }
    }
    out.finish()
}

/// Whether the bytes after a `<` start a tag, a comment or a declaration
/// rather than text such as `a < b`.
fn starts_tag(after: &[u8]) -> bool {
    match after {
        [b'/', c, ..] => c.is_ascii_alphabetic(),
        [c, ..] => c.is_ascii_alphabetic() || *c == b'!' || *c == b'?',
        [] => false,
    }
}

/// Index of the `>` that closes the tag starting at `start`, honouring quoted
/// attribute values; `None` when the tag never closes.
fn tag_close(bytes: &[u8], start: usize) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (offset, &b) in bytes[start + 1..].iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return Some(start + 1 + offset),
            None => {}
        }
    }
    None
}

struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
}

impl Tag {
    /// Parses the inside of `<…>`; declarations (`<!DOCTYPE …>`, `<?xml …?>`)
    /// come back as a nameless tag that does nothing.
    fn parse(inner: &str) -> Tag {
        let trimmed = inner.trim_end();
        let (closing, rest) = match trimmed.strip_prefix('/') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let name = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        Tag {
            name,
            closing,
            self_closing: trimmed.ends_with('/'),
        }
    }
}

#[derive(Default)]
struct TextWriter {
    text: String,
    quote_depth: usize,
    preformatted: usize,
    at_line_start: bool,
    pending_space: bool,
    started: bool,
}

impl TextWriter {
    fn tag(&mut self, tag: &Tag, hidden: &mut Option<String>) {
        let name = tag.name.as_str();
        if HIDDEN.contains(&name) {
            if !tag.closing && !tag.self_closing {
                *hidden = Some(tag.name.clone());
            }
            return;
        }
        match name {
            "br" => self.newline(),
            "blockquote" => {
                self.break_line();
                if tag.closing {
                    self.quote_depth = self.quote_depth.saturating_sub(1);
                } else if !tag.self_closing {
                    self.quote_depth += 1;
                }
            }
            "pre" => {
                self.break_line();
                if tag.closing {
                    self.preformatted = self.preformatted.saturating_sub(1);
                } else if !tag.self_closing {
                    self.preformatted += 1;
                }
            }
            "td" | "th" if !tag.closing => self.pending_space = true,
            "img" => {}
            _ if BLOCKS.contains(&name) => self.break_line(),
            _ => {}
        }
    }

    fn text(&mut self, text: &str) {
        for ch in text.chars() {
            if self.preformatted > 0 && ch == '\n' {
                self.newline();
            } else if self.preformatted == 0 && ch.is_whitespace() {
                if !self.at_line_start && self.started {
                    self.pending_space = true;
                }
            } else if ch == '\r' {
                continue;
            } else {
                self.begin_char();
                self.text.push(ch);
            }
        }
    }

    fn begin_char(&mut self) {
        if self.at_line_start || !self.started {
            for _ in 0..self.quote_depth {
                self.text.push_str("> ");
            }
            self.at_line_start = false;
            self.started = true;
        } else if self.pending_space {
            self.text.push(' ');
        }
        self.pending_space = false;
    }

    fn newline(&mut self) {
        if self.quote_depth > 0 && (self.at_line_start || !self.started) {
            // An empty line inside a quote is still part of the quote.
            self.text.push('>');
        }
        self.text.push('\n');
        self.at_line_start = true;
        self.started = true;
        self.pending_space = false;
    }

    fn break_line(&mut self) {
        if self.started && !self.at_line_start {
            self.newline();
        }
    }

    fn finish(self) -> String {
        let mut out = String::with_capacity(self.text.len());
        let mut blank_run = 0;
        for line in self.text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                blank_run += 1;
                if blank_run > 1 {
                    continue;
                }
            } else {
                blank_run = 0;
            }
            out.push_str(line);
            out.push('\n');
        }
        out.trim().to_owned()
    }
}

/// Replaces character references (`&amp;`, `&#20320;`, `&#x4f60;`, `&nbsp;`, …).
fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let reference = after
            .char_indices()
            .take(32)
            .find(|&(_, c)| c == ';' || !(c.is_ascii_alphanumeric() || c == '#'))
            .filter(|&(_, c)| c == ';')
            .map(|(end, _)| &after[..end]);
        match reference {
            Some(name) if !name.is_empty() => {
                let token = format!("&{name};");
                // Known references become their character; unknown ones stay as written.
                mail_parser::decoders::html::add_html_token(&mut out, token.as_bytes(), false);
                rest = &after[name.len() + 1..];
            }
            _ => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_breaks_become_lines() {
        let html = "<html><head><title>t</title><style>p{x:y}</style></head><body>\
                    <div>第一行</div><div>第二行<br>第三行</div><p>Para&nbsp;one &amp; two</p></body></html>";
        assert_eq!(html_to_text(html), "第一行\n第二行\n第三行\nPara one & two");
    }

    #[test]
    fn blockquote_lines_are_marked_as_quoted() {
        let html = "<div>New answer</div><blockquote><div>old line 1</div><div>old line 2</div>\
                    <blockquote>older</blockquote></blockquote><div>after</div>";
        assert_eq!(
            html_to_text(html),
            "New answer\n> old line 1\n> old line 2\n> > older\nafter"
        );
    }

    #[test]
    fn scripts_comments_and_stray_brackets() {
        let html =
            "a <!-- hidden --> b <script>alert('<b>')</script> c < d &#20320;&#x597D; &bogus; & e";
        assert_eq!(html_to_text(html), "a b c < d 你好 &bogus; & e");
    }

    #[test]
    fn attributes_with_angle_brackets_and_unclosed_tags() {
        assert_eq!(html_to_text("<a title=\"x>y\">link</a> text"), "link text");
        assert_eq!(html_to_text("text <div class=\"x"), "text");
        assert_eq!(html_to_text("<!DOCTYPE html><p>x</p>"), "x");
    }

    #[test]
    fn preformatted_text_keeps_its_lines() {
        assert_eq!(html_to_text("<pre>a  b\nc</pre>"), "a  b\nc");
    }
}
