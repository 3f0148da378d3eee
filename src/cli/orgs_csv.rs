//! The CSV file of `enroll --csv` and `enroll --adopt --csv`: one reader for
//! both. Its first line names the columns (in any order, the names in any
//! case); each command accepts its own columns and refuses the other's, so a
//! file meant for one is never half-read by the other. Every line is checked
//! whole — its org id, the same org twice, and each column as the command's
//! own option would be checked — and every problem is named with its line
//! before anything is enrolled or adopted: a file with one bad line changes
//! nothing. Blank lines are skipped.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::enrollment::parse_expiry;
use super::{at, count};
use crate::core::accounts::MemberRole;
use crate::core::domain::OrgId;
use crate::core::enrollment::{check_reader_principal, Adoption};

const ORG_ID: &str = "orgId";
const READER_PRINCIPAL: &str = "readerPrincipal";
const IAM_USER: &str = "iamUser";
const ACCOUNT: &str = "account";
const EXPIRES_AT: &str = "expiresAt";

/// The most problems a refusal lists (then how many more there are).
const SHOWN_PROBLEMS: usize = 20;

/// Which command reads the file, and so which columns it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Enroll,
    Adopt,
}

impl Mode {
    /// The columns the command accepts, `orgId` (required) first.
    fn columns(self) -> &'static [&'static str] {
        match self {
            Self::Enroll => &[ORG_ID, READER_PRINCIPAL],
            Self::Adopt => &[ORG_ID, IAM_USER, ACCOUNT, EXPIRES_AT],
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Enroll => Self::Adopt,
            Self::Adopt => Self::Enroll,
        }
    }

    fn command(self) -> &'static str {
        match self {
            Self::Enroll => "`enroll --csv`",
            Self::Adopt => "`enroll --adopt --csv`",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Self::Enroll => "enrolled",
            Self::Adopt => "adopted",
        }
    }

    /// What the command accepts, in words, with a file to copy.
    fn accepts(self) -> String {
        let example = match self {
            Self::Enroll => {
                "orgId,readerPrincipal\n    1234567,arn:aws:iam::210987654321:role/log-reader\n    7654321,"
            }
            Self::Adopt => {
                "orgId,iamUser,account,expiresAt\n    4200001,,,\n    4200002,org-legacy-4200002,,2027-03-01"
            }
        };
        format!(
            "{} reads the columns {ORG_ID} (required) and {} (optional), named on the first line, e.g.\n    {example}",
            self.command(),
            self.columns()[1..].join(", ")
        )
    }
}

/// What an adoption file's `account` and `expiresAt` are checked against.
pub(super) struct AdoptionLimits<'a> {
    /// The member accounts an `account` may name (MEMBER_ACCOUNT_ROLES).
    pub members: &'a [MemberRole],
    /// When the orgs are adopted: an `expiresAt` must be later.
    pub now: DateTime<Utc>,
    /// The latest `expiresAt`: adoption plus MAX_KEY_AGE.
    pub latest_expiry: DateTime<Utc>,
}

/// One line of a file, checked.
struct Line {
    org: OrgId,
    reader_principal: Option<String>,
    iam_user: Option<String>,
    account: Option<String>,
    expires_at: Option<DateTime<Utc>>,
}

/// The orgs of an `enroll --csv` file, with the principal that may read each
/// one's secret; or why nothing may be enrolled from it.
pub(super) fn read_enrollments(path: &Path) -> Result<Vec<(OrgId, Option<String>)>, String> {
    Ok(read(path, Mode::Enroll, None)?.into_iter().map(|l| (l.org, l.reader_principal)).collect())
}

/// The adoptions of an `enroll --adopt --csv` file; or why nothing may be
/// adopted from it.
pub(super) fn read_adoptions(path: &Path, limits: &AdoptionLimits) -> Result<Vec<Adoption>, String> {
    Ok(read(path, Mode::Adopt, Some(limits))?
        .into_iter()
        .map(|l| Adoption { org: l.org, user_name: l.iam_user, account: l.account, expires_at: l.expires_at })
        .collect())
}

/// A cell as a message shows it: at most 48 characters, escaped.
fn shown(text: &str) -> String {
    text.chars().take(48).flat_map(char::escape_debug).collect()
}

/// An IAM user name the functions' roles manage: `org-*`, of IAM's characters.
fn managed_user_name(name: &str) -> Result<(), String> {
    let iam_name =
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if !iam_name {
        Err(format!("iamUser '{}' is not an IAM user name (1 to 64 of A-Z a-z 0-9 + = , . @ _ -)", shown(name)))
    } else if !name.starts_with("org-") {
        Err(format!(
            "iamUser {name} is not named org-*: the functions' roles manage only org-* users under IAM_USER_PATH"
        ))
    } else {
        Ok(())
    }
}

fn read(path: &Path, mode: Mode, limits: Option<&AdoptionLimits>) -> Result<Vec<Line>, String> {
    let file = path.display();
    let refuse = |problems: &[String], columns: bool| {
        let more = problems.len().saturating_sub(SHOWN_PROBLEMS);
        format!(
            "{file}: nothing was {}; {}:\n  {}{}{}",
            mode.done(),
            count(problems.len(), "problem", "problems"),
            problems.iter().take(SHOWN_PROBLEMS).map(String::as_str).collect::<Vec<_>>().join("\n  "),
            if more > 0 { format!("\n  … and {more} more") } else { String::new() },
            if columns { format!("\n{}", mode.accepts()) } else { String::new() },
        )
    };
    let text = std::fs::read(path).map_err(|e| format!("{file}: {e}"))?;
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(text.as_slice());
    let mut records = reader.records();
    let mut problems = Vec::new();
    // The line a record starts on, counted from its byte offset: the reader's
    // own line number is that of the blank lines skipped before the record.
    let line_at = |position: Option<&csv::Position>| {
        let Some(position) = position else { return 0 };
        let mut start = usize::try_from(position.byte()).unwrap_or(usize::MAX).min(text.len());
        while text.get(start).is_some_and(|b| *b == b'\n' || *b == b'\r') {
            start += 1;
        }
        text[..start].iter().filter(|b| **b == b'\n').count() as u64 + 1
    };
    let line_of = |record: &csv::StringRecord| line_at(record.position());
    let unreadable = |e: csv::Error, problems: &mut Vec<String>| match e.kind() {
        csv::ErrorKind::Utf8 { pos, err } => {
            let line = line_at(pos.as_ref());
            problems.push(format!("line {line}: column {} is not UTF-8 text", err.field() + 1));
            Ok(())
        }
        _ => Err(format!("{file}: {e}")),
    };

    // The first line that is not blank names the columns.
    let header = loop {
        match records.next() {
            None => return Err(format!("{file}: the file is empty\n{}", mode.accepts())),
            Some(Ok(record)) if record.iter().all(str::is_empty) => {}
            Some(Ok(record)) => break record,
            Some(Err(e)) => {
                unreadable(e, &mut problems)?;
                return Err(refuse(&problems, true));
            }
        }
    };
    let header_line = line_of(&header);
    let all_columns = || Mode::Enroll.columns().iter().chain(Mode::Adopt.columns()).copied();
    // The column of each position (`None`: a column without a name, whose cells must be empty).
    let mut columns: Vec<Option<&'static str>> = Vec::new();
    for name in header.iter() {
        let name = name.trim_start_matches('\u{feff}');
        let column = all_columns().find(|c| c.eq_ignore_ascii_case(name));
        match column {
            _ if name.is_empty() => columns.push(None),
            Some(c) if mode.columns().contains(&c) => {
                if columns.contains(&Some(c)) {
                    problems.push(format!("line {header_line}: the column {c} is named twice"));
                }
                columns.push(Some(c));
            }
            Some(c) => {
                problems.push(format!(
                    "line {header_line}: the column {c} is one of {}, not of {} (a file for the other command?)",
                    mode.other().command(),
                    mode.command()
                ));
                columns.push(None);
            }
            None => {
                problems.push(format!("line {header_line}: unknown column '{}'", shown(name)));
                columns.push(None);
            }
        }
    }
    if !columns.contains(&Some(ORG_ID)) {
        let names_a_column = header
            .iter()
            .any(|name| all_columns().any(|c| c.eq_ignore_ascii_case(name.trim_start_matches('\u{feff}'))));
        if names_a_column {
            problems.push(format!("line {header_line}: there is no {ORG_ID} column"));
        } else {
            // A file without a header: its first line is an org's, not the columns' names.
            problems = vec![format!(
                "line {header_line}: the first line must name the columns, not be an org's: '{}'",
                shown(&header.iter().collect::<Vec<_>>().join(","))
            )];
        }
    }
    if !problems.is_empty() {
        return Err(refuse(&problems, true));
    }

    let mut lines = Vec::new();
    let mut line_of_org: BTreeMap<OrgId, u64> = BTreeMap::new();
    let mut line_of_user: BTreeMap<(Option<String>, String), u64> = BTreeMap::new();
    for record in records {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                unreadable(e, &mut problems)?;
                continue;
            }
        };
        if record.iter().all(str::is_empty) {
            continue;
        }
        let line = line_of(&record);
        let mut cells: BTreeMap<&str, String> = BTreeMap::new();
        for (i, value) in record.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            match columns.get(i).copied().flatten() {
                Some(column) => {
                    cells.insert(column, value.to_owned());
                }
                None => problems.push(format!(
                    "line {line}: '{}' is in column {}, which the first line does not name",
                    shown(value),
                    i + 1
                )),
            }
        }
        // A line's every cell is checked, whatever is wrong with its org id.
        let org = match cells.remove(ORG_ID).map(|id| OrgId::parse(&id)) {
            Some(Ok(org)) => Some(org),
            Some(Err(e)) => {
                problems.push(format!("line {line}: {e}"));
                None
            }
            None => {
                problems.push(format!("line {line}: no {ORG_ID}"));
                None
            }
        };
        if let Some(org) = &org {
            if let Some(first) = line_of_org.get(org) {
                problems.push(format!("line {line}: org {org} is listed twice (first on line {first})"));
            } else {
                line_of_org.insert(org.clone(), line);
            }
        }
        let reader_principal = cells.remove(READER_PRINCIPAL);
        if let Some(Err(e)) = reader_principal.as_deref().map(check_reader_principal) {
            problems.push(format!("line {line}: {READER_PRINCIPAL} {e}"));
        }
        let account = cells.remove(ACCOUNT);
        if let (Some(a), Some(limits)) = (&account, limits) {
            if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
                problems.push(format!("line {line}: account '{}' is not a 12-digit AWS account id", shown(a)));
            } else if limits.members.is_empty() {
                problems.push(format!(
                    "line {line}: account {a} is not a member account: MEMBER_ACCOUNT_ROLES names none (an empty \
                     account is the home account)"
                ));
            } else if !limits.members.iter().any(|m| &m.account_id == a) {
                let members: Vec<&str> = limits.members.iter().map(|m| m.account_id.as_str()).collect();
                problems.push(format!(
                    "line {line}: account {a} is not one of MEMBER_ACCOUNT_ROLES ({})",
                    members.join(", ")
                ));
            }
        }
        let iam_user = cells.remove(IAM_USER);
        if mode == Mode::Adopt {
            let name = iam_user.clone().or_else(|| org.as_ref().map(OrgId::user_name));
            if let Some(Err(e)) = name.as_deref().map(managed_user_name) {
                problems.push(format!("line {line}: {e}"));
            } else if let Some(name) = name {
                if let Some(first) = line_of_user.get(&(account.clone(), name.clone())) {
                    problems.push(format!("line {line}: the IAM user {name} is line {first}'s already"));
                } else {
                    line_of_user.insert((account.clone(), name), line);
                }
            }
        }
        let expires_at = match cells.remove(EXPIRES_AT).map(|t| parse_expiry(&t)).transpose() {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("line {line}: {EXPIRES_AT} {e}"));
                None
            }
        };
        if let (Some(t), Some(limits)) = (expires_at, limits) {
            if t <= limits.now {
                problems.push(format!("line {line}: {EXPIRES_AT} {} is not in the future", at(t)));
            } else if t > limits.latest_expiry {
                problems.push(format!(
                    "line {line}: {EXPIRES_AT} {} is later than adoption plus MAX_KEY_AGE ({})",
                    at(t),
                    at(limits.latest_expiry)
                ));
            }
        }
        if let Some(org) = org {
            lines.push(Line { org, reader_principal, iam_user, account, expires_at });
        }
    }
    if !problems.is_empty() {
        return Err(refuse(&problems, false));
    }
    if lines.is_empty() {
        return Err(format!("{file}: no orgs in it, only the columns' names"));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn enrollments(text: &str) -> Result<Vec<(OrgId, Option<String>)>, String> {
        read_enrollments(file(text).path())
    }

    fn adoptions(text: &str) -> Result<Vec<Adoption>, String> {
        let members = [MemberRole::parse("arn:aws:iam::111111111111:role/member").unwrap()];
        let now = "2026-12-01T00:00:00Z".parse().unwrap();
        let latest_expiry = "2027-03-01T00:00:00Z".parse().unwrap();
        read_adoptions(file(text).path(), &AdoptionLimits { members: &members, now, latest_expiry })
    }

    fn org(id: &str) -> OrgId {
        OrgId::parse(id).unwrap()
    }

    #[test]
    fn a_good_file_of_each_command_is_read_by_its_header_whatever_the_order_and_case() {
        let reader = "arn:aws:iam::210987654321:role/log-reader";
        let read = enrollments(&format!("readerPrincipal,ORGID\n,1234001\n\n{reader},1234002\n  ,  \n")).unwrap();
        assert_eq!(read, [(org("1234001"), None), (org("1234002"), Some(reader.to_owned()))]);

        let read =
            adoptions("\u{feff}orgId,iamUser,account,expiresAt\n4200001\n4200002,org-legacy,111111111111,2027-02-01\n")
                .unwrap();
        assert_eq!(read[0], Adoption { org: org("4200001"), user_name: None, account: None, expires_at: None });
        assert_eq!(
            read[1],
            Adoption {
                org: org("4200002"),
                user_name: Some("org-legacy".into()),
                account: Some("111111111111".into()),
                expires_at: Some("2027-02-01T00:00:00Z".parse().unwrap()),
            }
        );
    }

    /// A file without a header, a file meant for the other command, an
    /// unknown column: refused, naming the columns the command accepts.
    #[test]
    fn the_columns_are_checked_first_and_a_refusal_names_the_accepted_ones() {
        let err = enrollments("1234001\n1234002,arn:aws:iam::210987654321:root\n").unwrap_err();
        assert!(err.contains("nothing was enrolled") && err.contains("line 1: the first line must name"), "{err}");
        assert!(err.contains("reads the columns orgId (required) and readerPrincipal (optional)"), "{err}");

        let err = enrollments("orgId,iamUser\n1234567,admin\n").unwrap_err();
        assert!(err.contains("the column iamUser is one of `enroll --adopt --csv`, not of `enroll --csv`"), "{err}");
        assert!(err.contains("`enroll --csv` reads the columns orgId (required) and readerPrincipal"), "{err}");

        let err = adoptions("orgId,readerPrincipal\n1234567,arn:aws:iam::210987654321:root\n").unwrap_err();
        assert!(err.contains("the column readerPrincipal is one of `enroll --csv`"), "{err}");
        assert!(err.contains("orgId (required) and iamUser, account, expiresAt (optional)"), "{err}");

        let err = enrollments("orgId,reader\n1\n").unwrap_err();
        assert!(err.contains("line 1: unknown column 'reader'"), "{err}");
        let err = enrollments("readerPrincipal\narn:aws:iam::210987654321:root\n").unwrap_err();
        assert!(err.contains("there is no orgId column"), "{err}");
        let err = enrollments("orgId,orgid\n1,2\n").unwrap_err();
        assert!(err.contains("the column orgId is named twice"), "{err}");
        let err = enrollments("\n\n").unwrap_err();
        assert!(err.contains("empty") && err.contains("reads the columns"), "{err}");
        let err = enrollments("orgId\n\n").unwrap_err();
        assert!(err.contains("no orgs in it"), "{err}");
    }

    /// Every bad line is named, with its line number, in one refusal.
    #[test]
    fn every_problem_of_every_line_is_reported_together() {
        let err = enrollments(
            "orgId,readerPrincipal\n1234001\n1234002,not-an-arn\n../etc,log-reader\n\n1234001,arn:aws:iam::*:root\n,x\n7,,extra\n",
        )
        .unwrap_err();
        for expected in [
            "8 problems",
            "line 3: readerPrincipal 'not-an-arn' is not an IAM principal ARN",
            "line 4: invalid org id '../etc'",
            "line 4: readerPrincipal 'log-reader' is not an IAM principal ARN",
            "line 7: readerPrincipal 'x' is not an IAM principal ARN",
            "line 6: org 1234001 is listed twice (first on line 2)",
            "line 6: readerPrincipal 'arn:aws:iam::*:root' is not an IAM principal ARN",
            "line 7: no orgId",
            "line 8: 'extra' is in column 3, which the first line does not name",
        ] {
            assert!(err.contains(expected), "{expected:?} in {err}");
        }

        let err = adoptions(
            "orgId,iamUser,account,expiresAt\n1,admin\n2,,12345\n3,,222222222222\n4,,,tomorrow\n5,,,2026-11-01\n\
             6,,,2027-04-01\n7,org-4\n8,org-8,111111111111\n9,org-8,111111111111\n",
        )
        .unwrap_err();
        for expected in [
            "8 problems",
            "line 2: iamUser admin is not named org-*",
            "line 3: account '12345' is not a 12-digit AWS account id",
            "line 4: account 222222222222 is not one of MEMBER_ACCOUNT_ROLES (111111111111)",
            "line 5: expiresAt 'tomorrow' is not a time",
            "line 6: expiresAt 2026-11-01 00:00:00 UTC is not in the future",
            "line 7: expiresAt 2027-04-01 00:00:00 UTC is later than adoption plus MAX_KEY_AGE",
            "line 8: the IAM user org-4 is line 5's already",
            "line 10: the IAM user org-8 is line 9's already",
        ] {
            assert!(err.contains(expected), "{expected:?} in {err}");
        }
    }

    /// Line numbers count the blank lines skipped and Windows line ends.
    #[test]
    fn a_line_is_named_by_its_number_in_the_file() {
        let err = enrollments("\r\norgId\r\n1\r\n\r\n\r\nbad!\r\n2\n").unwrap_err();
        assert!(err.contains("line 6: invalid org id 'bad!'"), "{err}");
        let mut bytes = b"orgId\n1\n\n".to_vec();
        bytes.extend_from_slice(b"\xff\n");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        let err = read_enrollments(file.path()).unwrap_err();
        assert!(err.contains("line 4: column 1 is not UTF-8 text"), "{err}");
    }

    #[test]
    fn a_refusal_lists_twenty_problems_and_counts_the_rest() {
        let text = format!("orgId\n{}", "bad!\n".repeat(25));
        let err = enrollments(&text).unwrap_err();
        assert!(err.contains("25 problems") && err.contains("line 21:") && !err.contains("line 22:"), "{err}");
        assert!(err.contains("… and 5 more"), "{err}");
    }
}
