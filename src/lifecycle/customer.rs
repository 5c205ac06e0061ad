//! What a customer's reply on a case means: a satisfaction answer, a withdrawal, or correspondence.
//!
//! Only the first non-empty line of the new text is read for intent, so a
//! long letter that mentions "satisfied" somewhere is correspondence.

/// The customer's intent in a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerIntent {
    /// A satisfaction score 1–5 (or words meaning one). Scores of 3 and above close the case.
    Satisfaction(u8),
    /// The customer withdraws the complaint; the reason is the rest of the text.
    Withdraw { reason: String },
    /// Anything else: added to the case and forwarded to the department.
    Correspondence,
}

impl CustomerIntent {
    /// Whether a satisfaction answer means the customer is content.
    pub fn is_satisfied(&self) -> Option<bool> {
        match self {
            CustomerIntent::Satisfaction(score) => Some(*score >= 3),
            _ => None,
        }
    }
}

/// Longer phrases first: "不满意" contains "满意".
const DISSATISFIED: &[&str] = &[
    "非常不满意",
    "不满意",
    "不滿意",
    "dissatisfied",
    "not satisfied",
    "unsatisfied",
];
const SATISFIED: &[&str] = &[
    "非常满意",
    "满意",
    "滿意",
    "very satisfied",
    "satisfied",
    "基本满意",
];
const WITHDRAW: &[&str] = &[
    "撤诉",
    "撤訴",
    "撤销投诉",
    "撤回投诉",
    "撤回",
    "withdraw",
    "i withdraw",
];

/// Reads a customer's reply (new text, quotes removed).
pub fn interpret(text: &str) -> CustomerIntent {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let Some(first) = lines.next() else {
        return CustomerIntent::Correspondence;
    };
    let first_lower = first.to_lowercase();
    let head = first_lower.trim_end_matches(['.', '。', '!', '！']);
    if let Some(score) = score_of(head) {
        return CustomerIntent::Satisfaction(score);
    }
    if let Some(word) = WITHDRAW.iter().find(|w| head.starts_with(*w)) {
        let rest_of_line = head[word.len()..]
            .trim_start_matches([':', '：', ',', '，', ' '])
            .trim();
        let mut reason: Vec<&str> = Vec::new();
        if !rest_of_line.is_empty() {
            reason.push(rest_of_line);
        }
        reason.extend(lines);
        return CustomerIntent::Withdraw {
            reason: reason.join("\n"),
        };
    }
    if DISSATISFIED.contains(&head) {
        return CustomerIntent::Satisfaction(1);
    }
    if SATISFIED.contains(&head) {
        return CustomerIntent::Satisfaction(5);
    }
    CustomerIntent::Correspondence
}

fn score_of(head: &str) -> Option<u8> {
    let digits = head.trim_end_matches(['分', '星']);
    let converted: String = digits
        .chars()
        .map(|c| match c {
            '１'..='５' => char::from_u32(c as u32 - '１' as u32 + '1' as u32).unwrap_or(c),
            other => other,
        })
        .collect();
    match converted.as_str() {
        "1" | "2" | "3" | "4" | "5" => converted.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_words() {
        assert_eq!(interpret("5"), CustomerIntent::Satisfaction(5));
        assert_eq!(interpret("  2分\n谢谢"), CustomerIntent::Satisfaction(2));
        assert_eq!(interpret("４"), CustomerIntent::Satisfaction(4));
        assert_eq!(interpret("满意"), CustomerIntent::Satisfaction(5));
        assert_eq!(interpret("不满意。"), CustomerIntent::Satisfaction(1));
        assert_eq!(interpret("Not satisfied"), CustomerIntent::Satisfaction(1));
        assert_eq!(interpret("6"), CustomerIntent::Correspondence);
    }

    #[test]
    fn satisfaction_threshold() {
        assert_eq!(interpret("3").is_satisfied(), Some(true));
        assert_eq!(interpret("2").is_satisfied(), Some(false));
        assert_eq!(interpret("hello").is_satisfied(), None);
    }

    #[test]
    fn withdrawal_keeps_its_reason() {
        assert_eq!(
            interpret("撤诉：问题已经私下解决了\n不用再处理"),
            CustomerIntent::Withdraw {
                reason: "问题已经私下解决了\n不用再处理".to_owned()
            }
        );
        assert_eq!(
            interpret("Withdraw"),
            CustomerIntent::Withdraw {
                reason: String::new()
            }
        );
    }

    #[test]
    fn a_letter_that_mentions_satisfaction_is_correspondence() {
        assert_eq!(
            interpret("我对上次的处理不满意的地方还有很多，具体如下"),
            CustomerIntent::Correspondence
        );
    }
}
