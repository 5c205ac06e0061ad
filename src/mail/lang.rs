//! Language of a mail, as an ISO 639-1 code (`zh`, `en`, `ja`, …).
//!
//! whatlang decides when it is confident. Short texts are where it is not,
//! so then the script decides: mostly Han → `zh` (with kana → `ja`, hangul →
//! `ko`), mostly Latin → `en` (the one Latin-script language the default
//! templates have), nothing to go on → `und` (ISO 639 "undetermined"); the
//! caller then uses the policy's default language.

/// Code returned when the language cannot be determined.
pub const UNDETERMINED: &str = "und";

/// At most this many characters are looked at.
const SAMPLE_CHARS: usize = 4000;

/// A body with at least this many letters decides the language on its own.
const ENOUGH_BODY_LETTERS: usize = 20;

/// Detects the language of a mail: from its text when the text says enough,
/// else from subject and text together. Subjects are often copied from
/// elsewhere (a forwarded mail, a form); the body is what the sender wrote.
pub fn detect_mail_language(subject: &str, text: &str) -> String {
    let sample = sample_of(text);
    let scripts = ScriptCounts::of(sample);
    // The whole body counts for "enough letters", the sample for the decision;
    // the rest of a long body is only looked at while it can still matter.
    let enough = scripts.letters() >= ENOUGH_BODY_LETTERS
        || has_letters(
            &text[sample.len()..],
            ENOUGH_BODY_LETTERS - scripts.letters(),
        );
    if enough {
        decide(sample, &scripts)
    } else {
        detect_language(&format!("{subject}\n{text}"))
    }
}

/// Detects the language of `text`.
pub fn detect_language(text: &str) -> String {
    let sample = sample_of(text);
    decide(sample, &ScriptCounts::of(sample))
}

/// The first [`SAMPLE_CHARS`] characters of `text`, borrowed.
fn sample_of(text: &str) -> &str {
    match text.char_indices().nth(SAMPLE_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Whether `text` has at least `wanted` letters, counted as [`ScriptCounts`] counts them.
fn has_letters(text: &str, wanted: usize) -> bool {
    let mut counts = ScriptCounts::default();
    for ch in text.chars() {
        if counts.letters() >= wanted {
            break;
        }
        counts.add(ch);
    }
    counts.letters() >= wanted
}

/// The language of `sample`, whose scripts are `scripts`.
fn decide(sample: &str, scripts: &ScriptCounts) -> String {
    if scripts.letters() == 0 {
        return UNDETERMINED.to_owned();
    }
    // Script counts are exact for CJK; whatlang's trigram guesses are not needed there
    // and mislabel mixed Chinese/English mail by the English signature.
    if let Some(code) = scripts.cjk_language() {
        return code.to_owned();
    }
    let detected = whatlang::detect(sample);
    if let Some(info) = &detected {
        if info.is_reliable() {
            if let Some(code) = iso639_1(info.lang()) {
                return code.to_owned();
            }
        }
    }
    if scripts.latin * 2 >= scripts.letters() {
        return "en".to_owned();
    }
    match detected.and_then(|info| iso639_1(info.lang())) {
        Some(code) => code.to_owned(),
        None => UNDETERMINED.to_owned(),
    }
}

#[derive(Debug, Default)]
struct ScriptCounts {
    han: usize,
    kana: usize,
    hangul: usize,
    latin: usize,
    other: usize,
}

impl ScriptCounts {
    fn of(text: &str) -> Self {
        let mut counts = ScriptCounts::default();
        for ch in text.chars() {
            counts.add(ch);
        }
        counts
    }

    fn add(&mut self, ch: char) {
        if ch.is_ascii() {
            // Most of a mail is ASCII or CJK; ASCII needs no Unicode tables.
            if ch.is_ascii_alphabetic() {
                self.latin += 1;
            }
            return;
        }
        match ch as u32 {
            0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0xF900..=0xFAFF => {
                self.han += 1
            }
            0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => self.kana += 1,
            0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F => self.hangul += 1,
            code if ch.is_alphabetic() && code < 0x0250 => self.latin += 1,
            _ if ch.is_alphabetic() => self.other += 1,
            _ => {}
        }
    }

    fn letters(&self) -> usize {
        self.han + self.kana + self.hangul + self.latin + self.other
    }

    /// The CJK language when CJK characters make up at least a fifth of the
    /// letters. Latin letters count one per word-ish, not per letter: an
    /// English word is ~5 letters where a Chinese word is ~2 characters.
    fn cjk_language(&self) -> Option<&'static str> {
        let cjk = self.han + self.kana + self.hangul;
        if cjk == 0 || cjk * 5 < cjk + self.latin / 3 + self.other {
            return None;
        }
        if self.hangul > self.han + self.kana {
            Some("ko")
        } else if self.kana * 10 >= cjk {
            Some("ja")
        } else {
            Some("zh")
        }
    }
}

fn iso639_1(lang: whatlang::Lang) -> Option<&'static str> {
    use whatlang::Lang::*;
    Some(match lang {
        Eng => "en",
        Cmn => "zh",
        Jpn => "ja",
        Kor => "ko",
        Rus => "ru",
        Ukr => "uk",
        Spa => "es",
        Por => "pt",
        Fra => "fr",
        Deu => "de",
        Ita => "it",
        Nld => "nl",
        Swe => "sv",
        Dan => "da",
        Nob => "nb",
        Fin => "fi",
        Pol => "pl",
        Ces => "cs",
        Slk => "sk",
        Hun => "hu",
        Ron => "ro",
        Tur => "tr",
        Ara => "ar",
        Heb => "he",
        Hin => "hi",
        Tha => "th",
        Vie => "vi",
        Ind => "id",
        Ell => "el",
        Bul => "bg",
        Hrv => "hr",
        Srp => "sr",
        Slv => "sl",
        Lit => "lt",
        Lav => "lv",
        Est => "et",
        Pes => "fa",
        Urd => "ur",
        Ben => "bn",
        Tam => "ta",
        Tgl => "tl",
        Khm => "km",
        Mya => "my",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_follow_whatlang() {
        assert_eq!(
            detect_language("The gas meter in our building has been broken for a week and nobody came to repair it."),
            "en"
        );
        assert_eq!(
            detect_language(
                "我家的燃气表已经坏了一个星期，打了好几次电话都没有人来修，请尽快处理。"
            ),
            "zh"
        );
        assert_eq!(
            detect_language("Der Gaszähler in unserem Haus ist seit einer Woche kaputt und niemand kommt, um ihn zu reparieren."),
            "de"
        );
    }

    #[test]
    fn short_texts_fall_back_to_scripts() {
        assert_eq!(detect_language("漏气"), "zh");
        assert_eq!(detect_language("ガス漏れ"), "ja");
        assert_eq!(detect_language("가스 누출"), "ko");
        assert_eq!(detect_language("Gas leak!"), "en");
        assert_eq!(detect_language("12345 !!!"), UNDETERMINED);
        assert_eq!(detect_language(""), UNDETERMINED);
    }

    #[test]
    fn a_mail_body_outweighs_its_subject() {
        assert_eq!(
            detect_mail_language(
                "投诉：燃气表漏气",
                "There is a smell of gas at the door of the cafe."
            ),
            "en"
        );
        assert_eq!(detect_mail_language("燃气表漏气", "Help!"), "zh");
    }

    #[test]
    fn letters_past_the_sample_still_count_as_a_body_that_says_enough() {
        let padding = "1".repeat(SAMPLE_CHARS);
        // Enough letters in the body, all of them past the sample: the body
        // decides, and its sample has nothing to go on.
        let body = format!("{padding}Please send someone to look at the gas meter.");
        assert_eq!(detect_mail_language("燃气表漏气", &body), UNDETERMINED);
        // Too few letters in the body: subject and body together decide.
        let body = format!("{padding}Help");
        assert_eq!(detect_mail_language("燃气表漏气", &body), "zh");
    }

    #[test]
    fn chinese_complaint_with_english_signature_is_chinese() {
        let text = "燃气费账单有误，多收了两百元，请核实。\n\n--\nWang Li\nSenior Engineer, Example Technology Co., Ltd.\nTel +86 10 1234 5678";
        assert_eq!(detect_language(text), "zh");
    }
}
