//! Commands in a department's reply: `status: resolved`, `状态: 已解决`, `result: …`.
//!
//! A reply's first lines may be commands, one per line, `key: value` (the
//! full-width colon `：` works too). The command block ends at the first
//! line that is not a command, or at a blank line after a command; the rest
//! of the reply is the department's answer. A reply with any command that is
//! not understood applies none of them: the sender gets the list of problems.

use crate::rules::diag::did_you_mean;

/// A department's verdict on the state of its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Accepted,
    InProgress,
    Resolved,
    /// The department needs more information from the customer.
    NeedInfo,
    /// Not accepted (not a valid complaint, or not ours to handle). Needs a
    /// `cause:` line with the reason, which the complainant is told.
    Reject,
    /// The customer was called back after the answer (回访).
    FollowUp,
    /// Closed without agreement: the demands go beyond law, regulations and
    /// policy (非正常结案). Needs a `cause:` line with the reason.
    AbnormalClose,
}

/// Whose responsibility the complaint is; mixed counts as ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Responsibility {
    Ours,
    NotOurs,
}

impl Responsibility {
    /// The policy's name for it (`responsibility == ours`).
    pub fn as_str(self) -> &'static str {
        match self {
            Responsibility::Ours => "ours",
            Responsibility::NotOurs => "not_ours",
        }
    }
}

/// One understood command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status(Status),
    Responsibility(Responsibility),
    Cause(String),
    /// The text sent to the customer. Written as `result:` with nothing after
    /// it, the rest of the reply is the result.
    Result(String),
    Transfer {
        department: String,
        reason: String,
    },
    Appeal(String),
    Note(String),
    /// This case is merged into the case `into` (a case number as written).
    Merge {
        into: String,
        reason: String,
    },
}

/// A line that looked like a command but was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number in the reply's new text.
    pub line: usize,
    pub text: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: `{}`: {}", self.line, self.text, self.reason)
    }
}

/// A department reply read into commands and answer text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DepartmentReply {
    pub commands: Vec<Command>,
    /// What follows the command block.
    pub answer: String,
    pub problems: Vec<Problem>,
}

impl DepartmentReply {
    /// Whether the commands may be applied: all understood, none contradicting.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Status,
    Responsibility,
    Cause,
    Result,
    Transfer,
    Appeal,
    Note,
    Merge,
}

/// Every accepted spelling of a command key, English and Chinese (simplified and traditional).
const KEYS: &[(&str, Key)] = &[
    ("status", Key::Status),
    ("状态", Key::Status),
    ("狀態", Key::Status),
    ("responsibility", Key::Responsibility),
    ("责任", Key::Responsibility),
    ("責任", Key::Responsibility),
    ("cause", Key::Cause),
    ("原因", Key::Cause),
    ("result", Key::Result),
    ("处理结果", Key::Result),
    ("處理結果", Key::Result),
    ("结果", Key::Result),
    ("transfer", Key::Transfer),
    ("转办", Key::Transfer),
    ("轉辦", Key::Transfer),
    ("appeal", Key::Appeal),
    ("申诉", Key::Appeal),
    ("申訴", Key::Appeal),
    ("note", Key::Note),
    ("备注", Key::Note),
    ("備註", Key::Note),
    ("merge", Key::Merge),
    ("merge-into", Key::Merge),
    ("合并", Key::Merge),
    ("合併", Key::Merge),
    ("并案", Key::Merge),
    ("併案", Key::Merge),
];

const STATUS_VALUES: &[(&str, Status)] = &[
    ("accepted", Status::Accepted),
    ("accept", Status::Accepted),
    ("已受理", Status::Accepted),
    ("受理", Status::Accepted),
    ("in-progress", Status::InProgress),
    ("in progress", Status::InProgress),
    ("in_progress", Status::InProgress),
    ("处理中", Status::InProgress),
    ("處理中", Status::InProgress),
    ("resolved", Status::Resolved),
    ("已解决", Status::Resolved),
    ("已解決", Status::Resolved),
    ("已处理", Status::Resolved),
    ("need-info", Status::NeedInfo),
    ("need info", Status::NeedInfo),
    ("need_info", Status::NeedInfo),
    ("需补充", Status::NeedInfo),
    ("需補充", Status::NeedInfo),
    ("reject", Status::Reject),
    ("rejected", Status::Reject),
    ("不予受理", Status::Reject),
    ("驳回", Status::Reject),
    ("駁回", Status::Reject),
    ("follow-up", Status::FollowUp),
    ("follow up", Status::FollowUp),
    ("follow_up", Status::FollowUp),
    ("followed-up", Status::FollowUp),
    ("回访", Status::FollowUp),
    ("已回访", Status::FollowUp),
    ("回訪", Status::FollowUp),
    ("已回訪", Status::FollowUp),
    ("abnormal-close", Status::AbnormalClose),
    ("abnormal close", Status::AbnormalClose),
    ("abnormal_close", Status::AbnormalClose),
    ("abnormally-closed", Status::AbnormalClose),
    ("abnormally closed", Status::AbnormalClose),
    ("异常关闭", Status::AbnormalClose),
    ("異常關閉", Status::AbnormalClose),
    ("非正常结案", Status::AbnormalClose),
    ("非正常結案", Status::AbnormalClose),
];

const RESPONSIBILITY_VALUES: &[(&str, Responsibility)] = &[
    ("ours", Responsibility::Ours),
    ("mixed", Responsibility::Ours),
    ("我方", Responsibility::Ours),
    ("责任投诉", Responsibility::Ours),
    ("混合", Responsibility::Ours),
    ("not-ours", Responsibility::NotOurs),
    ("not ours", Responsibility::NotOurs),
    ("not_ours", Responsibility::NotOurs),
    ("非我方", Responsibility::NotOurs),
    ("非责任投诉", Responsibility::NotOurs),
];

/// Reads the command block at the top of a department's reply text (the new
/// text, without quoted parts).
pub fn parse_department_reply(text: &str) -> DepartmentReply {
    let mut reply = DepartmentReply::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut index = 0;
    // Leading blank lines are not part of anything.
    while index < lines.len() && lines[index].trim().is_empty() {
        index += 1;
    }
    // The 1-based line of each command, in the order of `reply.commands`.
    let mut command_lines: Vec<usize> = Vec::new();
    let mut open_result: Option<(usize, usize)> = None;
    while index < lines.len() {
        let line = lines[index].trim();
        if line.is_empty() {
            index += 1;
            break;
        }
        let Some((raw_key, value)) = split_command(line) else {
            break;
        };
        let key = normalise_key(raw_key);
        let line_no = index + 1;
        match KEYS.iter().find(|(k, _)| *k == key).map(|(_, k)| *k) {
            Some(k) => match read_value(k, value.trim()) {
                Ok(Some(command)) => {
                    reply.commands.push(command);
                    command_lines.push(line_no);
                }
                Ok(None) => open_result = Some((reply.commands.len(), line_no)),
                Err(reason) => reply.problems.push(Problem {
                    line: line_no,
                    text: line.to_owned(),
                    reason,
                }),
            },
            None => {
                // A line such as "Dear customer: …" ends the block when its key
                // is nothing like a command; a near miss is reported.
                let names: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                match did_you_mean(&key, names) {
                    Some(near) => reply.problems.push(Problem {
                        line: line_no,
                        text: line.to_owned(),
                        reason: format!("unknown command `{raw_key}`; did you mean `{near}`?"),
                    }),
                    None => break,
                }
            }
        }
        index += 1;
    }
    reply.answer = lines[index.min(lines.len())..].join("\n").trim().to_owned();
    if let Some((position, line_no)) = open_result {
        if reply.answer.is_empty() {
            reply.problems.push(Problem {
                line: line_no,
                text: "result:".to_owned(),
                reason: "`result:` is empty and no answer text follows it".to_owned(),
            });
        } else {
            reply
                .commands
                .insert(position, Command::Result(reply.answer.clone()));
            command_lines.insert(position, line_no);
        }
    }
    check_consistency(&mut reply, &lines, &command_lines);
    reply
}

/// `key: value` with an ASCII or full-width colon; keys are at most a few words.
fn split_command(line: &str) -> Option<(&str, &str)> {
    let (position, colon_len) = [(line.find(':'), 1), (line.find('：'), '：'.len_utf8())]
        .into_iter()
        .filter_map(|(p, l)| p.map(|p| (p, l)))
        .min_by_key(|(p, _)| *p)?;
    let key = line[..position].trim();
    if key.is_empty() || key.chars().count() > 20 || key.split_whitespace().count() > 2 {
        return None;
    }
    Some((key, &line[position + colon_len..]))
}

fn normalise_key(key: &str) -> String {
    key.trim().to_lowercase().replace(['_', ' '], "-")
}

fn read_value(key: Key, value: &str) -> Result<Option<Command>, String> {
    let lowered = value.to_lowercase();
    let lowered = lowered.trim_end_matches(['.', '。']);
    match key {
        Key::Status => lookup(STATUS_VALUES, lowered).map(|s| Some(Command::Status(s))),
        Key::Responsibility => {
            lookup(RESPONSIBILITY_VALUES, lowered).map(|r| Some(Command::Responsibility(r)))
        }
        Key::Result if value.is_empty() => Ok(None),
        Key::Cause | Key::Result | Key::Appeal | Key::Note if value.is_empty() => {
            Err("a value is needed after the colon".to_owned())
        }
        Key::Merge => read_merge(value.trim()).map(Some),
        Key::Cause => Ok(Some(Command::Cause(value.to_owned()))),
        Key::Result => Ok(Some(Command::Result(value.to_owned()))),
        Key::Appeal => Ok(Some(Command::Appeal(value.to_owned()))),
        Key::Note => Ok(Some(Command::Note(value.to_owned()))),
        Key::Transfer => {
            let value = value.trim();
            let split = value.find(|c: char| c.is_whitespace() || c == ',' || c == '，');
            let (department, reason) = match split {
                Some(at) => (
                    &value[..at],
                    value[at..]
                        .trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == '，'),
                ),
                None => (value, ""),
            };
            if department.is_empty() {
                return Err(
                    "name the department to transfer to, e.g. `transfer: quality wrong department`"
                        .to_owned(),
                );
            }
            if reason.trim().is_empty() {
                return Err("give the reason for the transfer after the department".to_owned());
            }
            Ok(Some(Command::Transfer {
                department: department.to_owned(),
                reason: reason.trim().to_owned(),
            }))
        }
    }
}

/// `merge: TS-2026-000123 [reason]`: the case number as written, and why.
fn read_merge(value: &str) -> Result<Command, String> {
    let split = value.find(|c: char| c.is_whitespace() || c == ',' || c == '，');
    let (number, reason) = match split {
        Some(at) => (
            &value[..at],
            value[at..].trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == '，'),
        ),
        None => (value, ""),
    };
    // People copy the number out of a subject, brackets and all.
    let number = number.trim_matches(['[', ']', '【', '】', '<', '>', '.', '。']);
    if number.is_empty() {
        return Err(
            "name the case to merge this one into, e.g. `merge: TS-2026-000123`".to_owned(),
        );
    }
    if !looks_like_case_number(number) {
        return Err(format!(
            "`{number}` is not a case number; write it as in the subject, e.g. `merge: TS-2026-000123`"
        ));
    }
    Ok(Command::Merge {
        into: number.to_owned(),
        reason: reason.trim().to_owned(),
    })
}

/// `PREFIX-YEAR-NUMBER`: letters, digits and dashes, with a dash and a digit.
fn looks_like_case_number(text: &str) -> bool {
    text.contains('-')
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text.chars().any(|c| c.is_ascii_digit())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn lookup<T: Copy>(table: &[(&str, T)], value: &str) -> Result<T, String> {
    if let Some((_, v)) = table.iter().find(|(k, _)| *k == value) {
        return Ok(*v);
    }
    let names: Vec<&str> = table.iter().map(|(k, _)| *k).collect();
    let mut reason = format!("`{value}` is not understood here");
    if let Some(near) = did_you_mean(value, names.iter().copied()) {
        reason.push_str(&format!("; did you mean `{near}`?"));
    } else {
        // Show the English words and the Chinese ones, not every alias.
        let shown: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !n.contains(' ') && !n.contains('_'))
            .collect();
        reason.push_str(&format!("; use one of: {}", shown.join(", ")));
    }
    Err(reason)
}

/// Commands that cannot be applied together: two of one kind that disagree,
/// a merge beside a change of state, a rejection or abnormal close without
/// its reason.
/// `source` is the reply's lines, `command_lines` the 1-based line of each
/// command.
fn check_consistency(reply: &mut DepartmentReply, source: &[&str], command_lines: &[usize]) {
    let problem = |index: usize, reason: &str| {
        let line = command_lines.get(index).copied().unwrap_or(0);
        let text = line
            .checked_sub(1)
            .and_then(|i| source.get(i))
            .map_or_else(String::new, |l| l.trim().to_owned());
        Problem {
            line,
            text,
            reason: reason.to_owned(),
        }
    };
    let mut problems = Vec::new();
    let statuses: Vec<(usize, Status)> = reply
        .commands
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Command::Status(s) => Some((i, *s)),
            _ => None,
        })
        .collect();
    if let Some(pair) = statuses.windows(2).find(|w| w[0].1 != w[1].1) {
        problems.push(problem(pair[1].0, "the reply gives two different statuses"));
    }
    let verdicts: Vec<(usize, Responsibility)> = reply
        .commands
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Command::Responsibility(r) => Some((i, *r)),
            _ => None,
        })
        .collect();
    if let Some(pair) = verdicts.windows(2).find(|w| w[0].1 != w[1].1) {
        problems.push(problem(
            pair[1].0,
            "the reply gives two different responsibility verdicts",
        ));
    }
    let has_cause = reply
        .commands
        .iter()
        .any(|c| matches!(c, Command::Cause(_)));
    // The complainant is told why (tourism 二.1: a complaint not accepted is
    // answered in writing with the reason), so both need the reason here.
    if !has_cause {
        for (index, status) in &statuses {
            let reason = match status {
                Status::AbnormalClose => {
                    "an abnormal close needs its reason: add a line `cause: …` (`原因: …`)"
                }
                Status::Reject => {
                    "a rejection needs its reason, which the complainant is told: \
                     add a line `cause: …` (`原因: …`)"
                }
                _ => continue,
            };
            problems.push(problem(*index, reason));
            break;
        }
    }
    let merges: Vec<usize> = reply
        .commands
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Command::Merge { .. }))
        .map(|(i, _)| i)
        .collect();
    if let Some(second) = merges.get(1) {
        problems.push(problem(
            *second,
            "a case is merged once: the reply has two `merge:` lines",
        ));
    }
    if !merges.is_empty() {
        for (index, command) in reply.commands.iter().enumerate() {
            if matches!(
                command,
                Command::Status(_)
                    | Command::Result(_)
                    | Command::Transfer { .. }
                    | Command::Appeal(_)
            ) {
                problems.push(problem(
                    index,
                    "`merge:` ends this case, so the reply cannot also change its status, \
                     send a result, transfer or appeal it",
                ));
            }
        }
    }
    reply.problems.extend(problems);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_commands_and_the_answer() {
        let reply = parse_department_reply("状态: 已解决\n责任：我方\n处理结果: 已为您退还多收的气费 120 元。\n\n经核实，系抄表错误。\n");
        assert!(reply.is_clean(), "{:?}", reply.problems);
        assert_eq!(
            reply.commands,
            vec![
                Command::Status(Status::Resolved),
                Command::Responsibility(Responsibility::Ours),
                Command::Result("已为您退还多收的气费 120 元。".to_owned()),
            ]
        );
        assert_eq!(reply.answer, "经核实，系抄表错误。");
    }

    #[test]
    fn english_commands_case_and_spacing_insensitive() {
        let reply = parse_department_reply("Status: In Progress\nResponsibility: mixed\nnote: engineer booked for Friday\nWe are on it.");
        assert!(reply.is_clean(), "{:?}", reply.problems);
        assert_eq!(
            reply.commands,
            vec![
                Command::Status(Status::InProgress),
                Command::Responsibility(Responsibility::Ours),
                Command::Note("engineer booked for Friday".to_owned()),
            ]
        );
        assert_eq!(reply.answer, "We are on it.");
    }

    #[test]
    fn an_empty_result_takes_the_rest_of_the_reply() {
        let reply = parse_department_reply(
            "status: resolved\nresult:\n\nDear customer,\nthe meter was replaced.",
        );
        assert!(reply.is_clean(), "{:?}", reply.problems);
        assert_eq!(
            reply.commands[1],
            Command::Result("Dear customer,\nthe meter was replaced.".to_owned())
        );
    }

    #[test]
    fn transfer_needs_a_department_and_a_reason() {
        let ok = parse_department_reply("转办: network，属于管网问题");
        assert_eq!(
            ok.commands,
            vec![Command::Transfer {
                department: "network".into(),
                reason: "属于管网问题".into()
            }]
        );
        let bad = parse_department_reply("transfer: network");
        assert_eq!(
            bad.problems[0].reason,
            "give the reason for the transfer after the department"
        );
    }

    #[test]
    fn misunderstood_values_and_near_miss_keys_are_problems() {
        let reply =
            parse_department_reply("status: resolvd\nstatsu: resolved\nresponsibility: perhaps\n");
        let reasons: Vec<String> = reply.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            vec![
                "line 1: `status: resolvd`: `resolvd` is not understood here; did you mean `resolved`?".to_owned(),
                "line 2: `statsu: resolved`: unknown command `statsu`; did you mean `status`?".to_owned(),
                "line 3: `responsibility: perhaps`: `perhaps` is not understood here; use one of: ours, mixed, 我方, 责任投诉, 混合, not-ours, 非我方, 非责任投诉".to_owned(),
            ]
        );
        assert!(!reply.is_clean());
    }

    #[test]
    fn prose_ends_the_command_block() {
        let reply = parse_department_reply("您好：\n我们已经安排人员上门。\nstatus: resolved");
        assert!(reply.commands.is_empty());
        assert!(reply.is_clean());
        assert_eq!(
            reply.answer,
            "您好：\n我们已经安排人员上门。\nstatus: resolved"
        );
    }

    #[test]
    fn contradicting_statuses_are_refused() {
        let reply = parse_department_reply("status: resolved\n状态: 处理中\n");
        assert_eq!(reply.problems.len(), 1);
        assert_eq!(
            reply.problems[0].reason,
            "the reply gives two different statuses"
        );
    }

    #[test]
    fn follow_up_in_both_languages() {
        for text in [
            "状态: 回访",
            "狀態：已回訪",
            "Status: Follow-up",
            "status: follow up",
        ] {
            let reply = parse_department_reply(text);
            assert!(reply.is_clean(), "{text}: {:?}", reply.problems);
            assert_eq!(
                reply.commands,
                vec![Command::Status(Status::FollowUp)],
                "{text}"
            );
        }
        let reply = parse_department_reply(
            "状态: 回访
处理结果: 客户表示满意，已到账。",
        );
        assert_eq!(
            reply.commands,
            vec![
                Command::Status(Status::FollowUp),
                Command::Result("客户表示满意，已到账。".to_owned()),
            ]
        );
    }

    #[test]
    fn an_abnormal_close_needs_its_reason() {
        let reply = parse_department_reply(
            "状态: 异常关闭
原因: 要求赔偿十万元，超出法律法规和公司政策",
        );
        assert!(reply.is_clean(), "{:?}", reply.problems);
        assert_eq!(
            reply.commands,
            vec![
                Command::Status(Status::AbnormalClose),
                Command::Cause("要求赔偿十万元，超出法律法规和公司政策".to_owned()),
            ]
        );
        let english = parse_department_reply(
            "cause: demands beyond policy
status: abnormal-close",
        );
        assert!(english.is_clean(), "{:?}", english.problems);
        assert_eq!(english.commands[1], Command::Status(Status::AbnormalClose));

        let bare = parse_department_reply(
            "备注: 客户情绪激动
状态: 非正常结案",
        );
        let reasons: Vec<String> = bare.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            vec!["line 2: `状态: 非正常结案`: an abnormal close needs its reason: add a line `cause: …` (`原因: …`)".to_owned()]
        );
    }

    #[test]
    fn a_rejection_needs_its_reason() {
        let reply = parse_department_reply("状态: 不予受理\n原因: 超过90天投诉时效");
        assert!(reply.is_clean(), "{:?}", reply.problems);
        assert_eq!(
            reply.commands,
            vec![
                Command::Status(Status::Reject),
                Command::Cause("超过90天投诉时效".to_owned()),
            ]
        );
        let bare = parse_department_reply("note: not ours\nstatus: reject");
        let reasons: Vec<String> = bare.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            vec!["line 2: `status: reject`: a rejection needs its reason, which the complainant is told: add a line `cause: …` (`原因: …`)".to_owned()]
        );
    }

    #[test]
    fn merge_reads_a_case_number_and_a_reason() {
        let reply = parse_department_reply("合并: [TS-2026-000123]，同一次停气");
        assert!(reply.is_clean(), "{:?}", reply.problems);
        assert_eq!(
            reply.commands,
            vec![Command::Merge {
                into: "TS-2026-000123".into(),
                reason: "同一次停气".into()
            }]
        );
        let english = parse_department_reply("Merge into: ts-2026-000007\n\nSame outage.");
        assert_eq!(
            english.commands,
            vec![Command::Merge {
                into: "ts-2026-000007".into(),
                reason: String::new()
            }]
        );
        assert_eq!(english.answer, "Same outage.");
    }

    #[test]
    fn a_merge_needs_a_case_number() {
        let reasons = |text: &str| -> Vec<String> {
            parse_department_reply(text)
                .problems
                .iter()
                .map(|p| p.reason.clone())
                .collect()
        };
        assert_eq!(
            reasons("merge:"),
            ["name the case to merge this one into, e.g. `merge: TS-2026-000123`"]
        );
        assert_eq!(
            reasons("合并: 上一个案子"),
            ["`上一个案子` is not a case number; write it as in the subject, e.g. `merge: TS-2026-000123`"]
        );
        assert_eq!(reasons("merge: 2026"), ["`2026` is not a case number; write it as in the subject, e.g. `merge: TS-2026-000123`"]);
    }

    #[test]
    fn a_merge_goes_with_no_change_of_state() {
        let reply = parse_department_reply(
            "备注: 重复投诉\nmerge: TS-2026-000001\nstatus: resolved\nmerge: TS-2026-000002",
        );
        let reasons: Vec<String> = reply.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            vec![
                "line 4: `merge: TS-2026-000002`: a case is merged once: the reply has two `merge:` lines".to_owned(),
                "line 3: `status: resolved`: `merge:` ends this case, so the reply cannot also change its status, send a result, transfer or appeal it".to_owned(),
            ]
        );
    }

    #[test]
    fn contradictions_name_their_line() {
        let reply = parse_department_reply(
            "status: resolved\nresponsibility: ours\n状态: 处理中\n责任: 非我方",
        );
        let reasons: Vec<String> = reply.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            vec![
                "line 3: `状态: 处理中`: the reply gives two different statuses".to_owned(),
                "line 4: `责任: 非我方`: the reply gives two different responsibility verdicts"
                    .to_owned(),
            ]
        );
    }
}
