//! Separating the new text of a mail from the earlier mail it quotes.
//!
//! Recognised: `>` lines anywhere; an attribution line ("On … wrote:",
//! "在 … 写道：", "… 写道："); Outlook and Foxmail separators
//! ("-----Original Message-----", "------------------ 原始邮件 ------------------");
//! Outlook header blocks ("From:/发件人:" followed by "Sent:/发送时间:",
//! "To:/收件人:", "Subject:/主题:" lines). Everything from the first attribution,
//! separator or header block on is quoted; `>` lines before it are quoted too,
//! and unquoted lines between them stay new text (inline answers).

use std::sync::LazyLock;

use regex::Regex;

/// A mail body split into what the sender wrote now and what they quoted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplySplit {
    pub new_text: String,
    pub quoted: String,
}

static ENGLISH_ATTRIBUTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^\s*on\s.{4,}\swrote:\s*$").expect("valid regex"));
static CHINESE_ATTRIBUTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^.{0,200}写道\s*[:：]\s*$").expect("valid regex"));
static SEPARATOR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^\s*[-_=]{2,}\s*(original message|原始邮件|邮件原件|原邮件|回复的原邮件)\s*[-_=]{2,}\s*$",
    )
    .expect("valid regex")
});
static HEADER_FROM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^\s*\*?(from|发件人)\*?\s*[:：]").expect("valid regex"));
static HEADER_OTHER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^\s*\*?(sent|date|to|cc|subject|发送时间|日期|时间|收件人|抄送|主题)\*?\s*[:：]",
    )
    .expect("valid regex")
});
static UNDERSCORE_RULE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*_{5,}\s*$").expect("valid regex"));

/// Splits `text` into new text and quoted text. Both are trimmed of blank
/// lines at their ends; line order is kept within each.
pub fn split_reply(text: &str) -> ReplySplit {
    let lines: Vec<&str> = text.lines().collect();
    let cut = quote_start(&lines).unwrap_or(lines.len());
    let mut new_lines = Vec::new();
    let mut quoted_lines = Vec::new();
    for line in &lines[..cut] {
        if is_quote_line(line) {
            quoted_lines.push(*line);
        } else {
            new_lines.push(*line);
        }
    }
    quoted_lines.extend_from_slice(&lines[cut..]);
    ReplySplit {
        new_text: join_trimmed(&new_lines),
        quoted: join_trimmed(&quoted_lines),
    }
}

fn is_quote_line(line: &str) -> bool {
    line.trim_start().starts_with('>')
}

/// Index of the first line of a quoted earlier mail: an attribution,
/// a separator or an Outlook header block.
fn quote_start(lines: &[&str]) -> Option<usize> {
    for (index, line) in lines.iter().enumerate() {
        if line.chars().count() > 300 {
            continue;
        }
        if may_be_separator(line) && SEPARATOR.is_match(line) {
            return Some(index);
        }
        if is_attribution(lines, index) {
            return Some(index);
        }
        if line.contains([':', '：'])
            && HEADER_FROM.is_match(line)
            && is_header_block(&lines[index + 1..])
        {
            return Some(rule_above(lines, index));
        }
    }
    None
}

/// An attribution line, possibly wrapped onto a second line by the client.
fn is_attribution(lines: &[&str], index: usize) -> bool {
    let line = lines[index];
    if line.contains("写道") && CHINESE_ATTRIBUTION.is_match(line) {
        // "… 写道：" is only an attribution when a quote follows it.
        return quote_follows(&lines[index + 1..]) || line.trim_start().starts_with('在');
    }
    if contains_ignoring_ascii_case(line, "wrote:") && ENGLISH_ATTRIBUTION.is_match(line) {
        return true;
    }
    if starts_like_attribution(line) {
        if let Some(next) = lines.get(index + 1) {
            let joined = format!("{} {}", line.trim_end(), next.trim());
            return next.chars().count() < 100 && ENGLISH_ATTRIBUTION.is_match(&joined);
        }
    }
    false
}

// The regexes run on every line of every mail; these cheap tests of text each
// regex requires skip them on the lines that cannot match.

/// Whether `line` has two characters of `[-_=]` in a row, as every separator has.
fn may_be_separator(line: &str) -> bool {
    let rule = |byte: &u8| matches!(byte, b'-' | b'_' | b'=');
    line.as_bytes()
        .windows(2)
        .any(|pair| rule(&pair[0]) && rule(&pair[1]))
}

/// Whether `line` contains the ASCII `needle` in any letter case. Only ASCII
/// letters fold to the letters of "wrote" (a test checks every character).
fn contains_ignoring_ascii_case(line: &str, needle: &str) -> bool {
    line.as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Whether the line, lower-cased, starts with "on " (after leading space).
/// Only `O` and `N` lower-case to `o` and `n` (a test checks every character).
fn starts_like_attribution(line: &str) -> bool {
    let mut chars = line.trim_start().chars();
    matches!(chars.next(), Some('o' | 'O'))
        && matches!(chars.next(), Some('n' | 'N'))
        && chars.next() == Some(' ')
}

fn quote_follows(rest: &[&str]) -> bool {
    rest.iter()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| is_quote_line(l))
}

/// At least two of Sent/Date/To/Subject within the next five lines.
fn is_header_block(rest: &[&str]) -> bool {
    rest.iter()
        .take(5)
        .filter(|line| HEADER_OTHER.is_match(line))
        .count()
        >= 2
}

/// Outlook draws a line of underscores above its header block: cut there.
fn rule_above(lines: &[&str], index: usize) -> usize {
    let mut above = index;
    while above > 0 && lines[above - 1].trim().is_empty() {
        above -= 1;
    }
    if above > 0 && UNDERSCORE_RULE.is_match(lines[above - 1]) {
        above - 1
    } else {
        index
    }
}

fn join_trimmed(lines: &[&str]) -> String {
    let start = lines.iter().position(|l| !l.trim().is_empty());
    let end = lines.iter().rposition(|l| !l.trim().is_empty());
    match (start, end) {
        (Some(start), Some(end)) => lines[start..=end]
            .iter()
            .map(|l| l.trim_end())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_client_attribution_and_quote() {
        let text = "Thanks, the meter was replaced.\n\nOn Tue, Nov 24, 2026 at 10:00 AM Wang <wang@example.com> wrote:\n> The meter is broken.\n> Please help.\n";
        let split = split_reply(text);
        assert_eq!(split.new_text, "Thanks, the meter was replaced.");
        assert!(split.quoted.starts_with("On Tue"));
        assert!(split.quoted.ends_with("> Please help."));
    }

    #[test]
    fn wrapped_english_attribution() {
        let text = "Resolved.\nOn Tue, Nov 24, 2026 at 10:00 AM Customer Service Centre <service@gas.example>\nwrote:\n> original";
        assert_eq!(split_reply(text).new_text, "Resolved.");
    }

    #[test]
    fn chinese_client_attribution() {
        let text = "状态: 已解决\n已上门更换燃气表。\n\n在 2026年11月24日 星期二 10:00，王女士 <wang@example.com> 写道：\n> 燃气表坏了\n";
        let split = split_reply(text);
        assert_eq!(split.new_text, "状态: 已解决\n已上门更换燃气表。");
        assert!(split.quoted.contains("燃气表坏了"));
    }

    #[test]
    fn outlook_header_blocks_in_both_languages() {
        let english = "Done.\n\n________________________________\nFrom: Complaints <complaints@gas.example>\nSent: Tuesday, November 24, 2026 10:00\nTo: Service <service@gas.example>\nSubject: [TS-2026-000123] Gas meter\n\nOriginal text";
        let split = split_reply(english);
        assert_eq!(split.new_text, "Done.");
        assert!(split.quoted.starts_with("____"));

        let chinese = "处理结果: 已更换\n\n-----邮件原件-----\n发件人: 投诉中心 <complaints@gas.example>\n发送时间: 2026年11月24日 10:00\n收件人: service@gas.example\n主题: 燃气表\n\n原文";
        let split = split_reply(chinese);
        assert_eq!(split.new_text, "处理结果: 已更换");
        assert!(split.quoted.contains("原文"));

        let outlook_zh = "好的\n\n发件人: 投诉中心 <complaints@gas.example>\n发送时间: 2026年11月24日 10:00\n收件人: service@gas.example\n主题: 燃气表\n\n原文";
        assert_eq!(split_reply(outlook_zh).new_text, "好的");
    }

    #[test]
    fn header_blocks_with_full_width_colons() {
        let text = "已处理\n\n发件人：投诉中心 <complaints@gas.example>\n发送时间：2026年11月24日 10:00\n主题：燃气表\n\n原文";
        let split = split_reply(text);
        assert_eq!(split.new_text, "已处理");
        assert!(split.quoted.starts_with("发件人："));
    }

    #[test]
    fn original_message_separators() {
        let text = "See below.\n-----Original Message-----\nFrom: x\nold";
        assert_eq!(split_reply(text).new_text, "See below.");
        let foxmail = "收到\n------------------\u{a0}原始邮件\u{a0}------------------\n发件人: x";
        assert_eq!(split_reply(foxmail).new_text, "收到");
    }

    #[test]
    fn inline_answers_between_quotes_stay_new_text() {
        let text = "> Is the leak fixed?\nYes, on Monday.\n> Who pays?\nWe do.";
        let split = split_reply(text);
        assert_eq!(split.new_text, "Yes, on Monday.\nWe do.");
        assert_eq!(split.quoted, "> Is the leak fixed?\n> Who pays?");
    }

    #[test]
    fn plain_complaint_is_all_new_text() {
        let text = "我家燃气表坏了。\n\n发件人我是王女士，电话 138…\nFrom now on I will not pay.";
        let split = split_reply(text);
        assert_eq!(split.new_text, text);
        assert_eq!(split.quoted, "");
    }

    /// Every character, for the claims the prefilters rest on.
    fn every_char() -> impl Iterator<Item = char> {
        (0..=u32::from(char::MAX)).filter_map(char::from_u32)
    }

    #[test]
    fn only_ascii_letters_match_the_letters_of_wrote_ignoring_case() {
        let letters = Regex::new("(?i)^[wrote]$").unwrap();
        let mut buffer = [0; 4];
        let folding: Vec<char> = every_char()
            .filter(|c| letters.is_match(c.encode_utf8(&mut buffer)))
            .collect();
        assert!(folding.iter().all(char::is_ascii_alphabetic), "{folding:?}");
        assert_eq!(folding.len(), 10);
    }

    #[test]
    fn only_o_and_n_lower_case_to_o_and_n() {
        for c in every_char() {
            let lower: String = c.to_lowercase().collect();
            for (target, sources) in [('o', "oO"), ('n', "nN"), (' ', " ")] {
                if lower.starts_with(target) {
                    assert!(sources.contains(c), "{c:?} lower-cases to {lower:?}");
                }
            }
        }
    }

    /// `quote_start` and `is_attribution` as they were before the
    /// prefilters: the regexes alone.
    fn quote_start_by_regex(lines: &[&str]) -> Option<usize> {
        for (index, line) in lines.iter().enumerate() {
            if line.chars().count() > 300 {
                continue;
            }
            if SEPARATOR.is_match(line) {
                return Some(index);
            }
            if is_attribution_by_regex(lines, index) {
                return Some(index);
            }
            if HEADER_FROM.is_match(line) && is_header_block(&lines[index + 1..]) {
                return Some(rule_above(lines, index));
            }
        }
        None
    }

    fn is_attribution_by_regex(lines: &[&str], index: usize) -> bool {
        let line = lines[index];
        if CHINESE_ATTRIBUTION.is_match(line) {
            return quote_follows(&lines[index + 1..]) || line.trim_start().starts_with('在');
        }
        if ENGLISH_ATTRIBUTION.is_match(line) {
            return true;
        }
        if line.trim_start().to_lowercase().starts_with("on ") {
            if let Some(next) = lines.get(index + 1) {
                let joined = format!("{} {}", line.trim_end(), next.trim());
                return next.chars().count() < 100 && ENGLISH_ATTRIBUTION.is_match(&joined);
            }
        }
        false
    }

    proptest::proptest! {
        // Lines that match are a small part of what the strategy makes.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]

        #[test]
        fn prefilters_change_no_split(
            lines in proptest::collection::vec(
                concat!(
                    "[ \\t]?(On |oN |在|From|发件人|Sent|主题|--|__|=-|> |)",
                    "( ?x{0,6}\\u{a0}?)",
                    "(wrote:|WROTE:|Wrote :|写道：|写道 :|写道|原始邮件 __|Original Message ==|:|：|)",
                    "[ ]?",
                ),
                0..6,
            )
        ) {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            proptest::prop_assert_eq!(quote_start(&lines), quote_start_by_regex(&lines));
        }
    }

    #[test]
    fn a_sentence_ending_in_wrote_is_not_an_attribution_without_a_quote() {
        let text = "他在信里写道：\n燃气费太高了。";
        assert_eq!(split_reply(text).new_text, text);
    }
}
