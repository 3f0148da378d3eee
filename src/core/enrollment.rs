//! Enrollment: an org gets an IAM user that can read only its own prefix of
//! the managed bucket, and a registry record in state `Enabled` with no key
//! yet (its first manual rotation issues the first key).

use chrono::{DateTime, Utc};
use tracing::info;

use super::accounts::{place, release, MemberRole, PlacementError};
use super::domain::{HistoryEntry, IamUser, KeyVersion, OrgId, OrgRecord, PreviousKey};
use super::duration::Duration;
use super::ports::{AccessKeys, AuditEntry, AuditLog, IamKey, PortError, Registry, UserSpec};
use super::rotation::write_audit;

/// Where an org's user lives and what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollSettings {
    pub iam_user_path: String,
    pub managed_bucket: String,
    /// Contains `{orgId}`, e.g. `{orgId}/` or `logs/{orgId}/`.
    pub prefix_template: String,
    /// The member accounts a new org may be placed in (none: the home account).
    pub members: Vec<MemberRole>,
    /// The most orgs placed in one member account.
    pub orgs_per_account: usize,
}

impl EnrollSettings {
    pub fn prefix_of(&self, org: &OrgId) -> String {
        self.prefix_template.replace("{orgId}", org.as_str())
    }
}

/// The outcome of an enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// `false`: the org was enrolled already and nothing changed.
    pub created: bool,
    pub record: OrgRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("org {org} is enrolled already with bucket {bucket} and prefix {prefix}, not {wanted}")]
    Mismatch { org: OrgId, bucket: String, prefix: String, wanted: String },
    #[error("'{0}' is not an IAM principal ARN (e.g. arn:aws:iam::210987654321:role/log-reader), without wildcards")]
    BadPrincipal(String),
    #[error("AWS failed during enrollment: {0}")]
    Aws(#[from] PortError),
    #[error("no member account can take the org: {0}")]
    Placement(#[from] PlacementError),
    #[error(
        "the IAM user {user} already holds {keys} access key(s): bring the org in with `enroll --adopt`, which \
         registers its keys (nothing was created or deleted)"
    )]
    HasKeys { user: IamUser, keys: usize },
    #[error("cannot adopt org {org}: {why}")]
    NotAdoptable { org: OrgId, why: String },
}

/// Enrolls `org`. Idempotent: enrolling an enrolled org changes nothing.
pub async fn enroll(
    registry: &dyn Registry,
    keys: &dyn AccessKeys,
    audit: &dyn AuditLog,
    settings: &EnrollSettings,
    org: &OrgId,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Enrolled, EnrollError> {
    let prefix = settings.prefix_of(org);
    if let Some(existing) = registry.load(org).await? {
        return same_place(existing.value, settings, &prefix);
    }
    let mut spec = UserSpec {
        user_name: org.user_name(),
        account: None,
        path: settings.iam_user_path.clone(),
        org: org.clone(),
        bucket: settings.managed_bucket.clone(),
        prefix: prefix.clone(),
    };
    // The user first: a record never names a user that does not exist. With
    // member accounts, it goes to the one with the most room; an account whose
    // role is refused is passed over (it would otherwise, having the most room,
    // take every enrollment), and named when no other account can take the org.
    let mut candidates = settings.members.clone();
    let mut refused: Option<PortError> = None;
    loop {
        if !settings.members.is_empty() {
            spec.account = match place(registry, &candidates, settings.orgs_per_account, org).await {
                Ok(placed) => Some(placed.account_id),
                Err(PlacementError::Full { .. }) if refused.is_some() => {
                    return Err(refused.expect("checked").into());
                }
                Err(e) => return Err(e.into()),
            };
        }
        // A user made before this service, with live keys, is adopted, never
        // taken over here: its keys would look "never delivered" to the sweep.
        let made = match keys.create_user(&spec).await {
            Ok(held) if !held.is_empty() => {
                // The place goes back; the user and its keys stay untouched.
                if let Some(account) = spec.account.as_deref() {
                    release(registry, account, org).await;
                }
                let user = IamUser { account: spec.account.clone(), name: spec.user_name.clone() };
                return Err(EnrollError::HasKeys { user, keys: held.len() });
            }
            Ok(_) => keys.ensure_user(&spec).await,
            Err(e) => Err(e),
        };
        match made {
            Ok(()) => break,
            Err(e) => {
                give_back(registry, keys, &spec, None).await;
                let Some(account) = spec.account.as_deref().filter(|_| is_refused_role(&e)) else {
                    return Err(e.into());
                };
                tracing::warn!(error = %e, %account, "passing over a member account whose role is refused");
                candidates.retain(|m| m.account_id != account);
                refused = Some(e);
                if candidates.is_empty() {
                    return Err(refused.expect("just set").into());
                }
            }
        }
    }
    let account = spec.account.clone();
    let record = OrgRecord { account_id: account, ..OrgRecord::enrolled(org, &settings.managed_bucket, &prefix, now) };
    match registry.create(&record).await {
        Ok(_) => {}
        Err(PortError::Conflict) => {
            // Enrolled concurrently by someone else.
            let existing = registry.load(org).await?.ok_or(PortError::Conflict)?;
            give_back(registry, keys, &spec, existing.value.account_id.as_deref()).await;
            return same_place(existing.value, settings, &prefix);
        }
        // The write may have been made with its answer lost: the place stays
        // taken (a count too high never overshoots a cap).
        Err(e) => return Err(e.into()),
    }
    info!(org = %org, user = %spec.user_name, "enrolled");
    let entry = AuditEntry {
        at: now,
        org_id: org.clone(),
        action: "enroll".into(),
        actor: actor.to_owned(),
        request_id: None,
        key_ids: Vec::new(),
        detail: Some(format!("user {}{} reads s3://{}/{}", spec.path, spec.user_name, spec.bucket, spec.prefix)),
    };
    write_audit(audit, &entry).await;
    Ok(Enrolled { created: true, record })
}

/// An org whose IAM user exists already, to be adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    pub org: OrgId,
    /// The user's name (`None`: the default `org-{orgId}`).
    pub user_name: Option<String>,
    /// The member account the user lives in (`None`: the home account).
    pub account: Option<String>,
    /// A later expiry than the migration window's, if wanted.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What adoption needs to know beyond enrollment's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptSettings {
    pub enroll: EnrollSettings,
    pub max_key_age: Duration,
    /// The longest expiry warning: an adopted key expires no earlier than
    /// adoption plus this, so that every warning reaches the org.
    pub longest_warning: Duration,
    /// How long an adopted second key stays active (ROTATION_GRACE_PERIOD).
    pub grace: Duration,
}

/// What an adoption found and did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// `false`: the org was enrolled already and nothing changed.
    pub created: bool,
    pub record: OrgRecord,
    /// Policies on the user besides the project's own: reported, not removed.
    pub other_policies: Vec<String>,
}

/// Adopts an org whose IAM user exists with live keys (made before this
/// service): registers what is there instead of creating anything. The newest
/// active key becomes the current key version, with its real creation date; a
/// second key the previous one (an active one retires after the grace period).
/// The key keeps its real age, but never expires before adoption plus the
/// longest expiry warning (or `expires_at`, at most adoption plus the maximum
/// age). The vault holds no secret for it (IAM never shows an existing
/// secret): the org's first rotation fills it. The user gets the read-only
/// policy; its other policies are reported. `dry_run`: nothing is written.
/// Idempotent: an enrolled org is answered with its record.
#[allow(clippy::too_many_arguments)] // enroll's ports and arguments, and the dry run
pub async fn adopt(
    registry: &dyn Registry,
    keys: &dyn AccessKeys,
    audit: &dyn AuditLog,
    settings: &AdoptSettings,
    adoption: &Adoption,
    now: DateTime<Utc>,
    actor: &str,
    dry_run: bool,
) -> Result<Adopted, EnrollError> {
    let org = &adoption.org;
    let refuse = |why: String| EnrollError::NotAdoptable { org: org.clone(), why };
    let prefix = settings.enroll.prefix_of(org);
    if let Some(existing) = registry.load(org).await? {
        let record = same_place(existing.value, &settings.enroll, &prefix)?.record;
        return Ok(Adopted { created: false, record, other_policies: Vec::new() });
    }
    if let Some(account) = &adoption.account {
        if !settings.enroll.members.iter().any(|m| &m.account_id == account) {
            return Err(refuse(format!("account {account} is not one of MEMBER_ACCOUNT_ROLES")));
        }
    }
    let name = adoption.user_name.clone().unwrap_or_else(|| org.user_name());
    if !name.starts_with("org-") {
        return Err(refuse(format!(
            "the user {name} is not named org-*: the functions' roles manage only org-* users under IAM_USER_PATH"
        )));
    }
    let user = IamUser { account: adoption.account.clone(), name: name.clone() };
    let held = match keys.list_keys(&user).await {
        Ok(held) => held,
        Err(PortError::NoSuchUser) => return Err(refuse(format!("the IAM user {user} does not exist; use `enroll`"))),
        Err(e) => return Err(e.into()),
    };
    let mut held: Vec<IamKey> = held.into_iter().filter(|k| k.created_at.is_some()).collect();
    held.sort_by_key(|k| std::cmp::Reverse((k.active, k.created_at)));
    let Some(newest) = held.first().filter(|k| k.active).cloned() else {
        return Err(refuse(format!("the IAM user {user} has no active access key; use `enroll`")));
    };
    let created_at = newest.created_at.expect("kept only dated keys");
    // The migration window: never cut off on the day of adoption.
    let natural = created_at + settings.max_key_age.to_chrono();
    let window = now + settings.longest_warning.to_chrono();
    let latest = now + settings.max_key_age.to_chrono();
    let expires_at = match adoption.expires_at {
        Some(at) if at > latest => {
            return Err(refuse(format!("--expires-at {at} is later than adoption plus MAX_KEY_AGE ({latest})")))
        }
        Some(at) if at <= natural.max(window) => {
            return Err(refuse(format!(
                "--expires-at {at} is not later than the key's own expiry ({})",
                natural.max(window)
            )))
        }
        Some(at) => Some(at),
        None if natural < window => Some(window),
        None => None,
    };
    let second = held.get(1).cloned();
    let mut record = OrgRecord {
        iam_user: name.clone(),
        account_id: adoption.account.clone(),
        ..OrgRecord::enrolled(org, &settings.enroll.managed_bucket, &prefix, now)
    };
    record.history.clear();
    let first_version = if second.is_some() { 2 } else { 1 };
    record.previous = second.as_ref().map(|k| {
        let key = KeyVersion {
            version: 1,
            access_key_id: k.access_key_id.clone(),
            created_at: k.created_at.expect("kept only dated keys"),
            vault_version: None,
            expires_at: None,
        };
        PreviousKey::adopted(key, k.active, now, settings.grace)
    });
    record.current = Some(KeyVersion {
        version: first_version,
        access_key_id: newest.access_key_id.clone(),
        created_at,
        vault_version: None,
        expires_at,
    });
    let key_ids: Vec<String> = record.known_key_ids().map(str::to_owned).collect();
    record.record_history(HistoryEntry {
        at: now,
        event: "adopted".into(),
        version: Some(first_version),
        access_key_id: Some(newest.access_key_id.clone()),
    });
    let other_policies = keys.other_policies(&user).await?;
    if dry_run {
        return Ok(Adopted { created: true, record, other_policies });
    }
    if let Some(account) = &adoption.account {
        super::accounts::place_in(registry, account, org).await?;
    }
    let spec = UserSpec {
        user_name: name.clone(),
        account: adoption.account.clone(),
        path: settings.enroll.iam_user_path.clone(),
        org: org.clone(),
        bucket: settings.enroll.managed_bucket.clone(),
        prefix: prefix.clone(),
    };
    keys.ensure_user(&spec).await?;
    match registry.create(&record).await {
        Ok(_) => {}
        Err(PortError::Conflict) => {
            let existing = registry.load(org).await?.ok_or(PortError::Conflict)?;
            let record = same_place(existing.value, &settings.enroll, &prefix)?.record;
            return Ok(Adopted { created: false, record, other_policies });
        }
        Err(e) => return Err(e.into()),
    }
    info!(org = %org, user = %user, keys = ?key_ids, "adopted");
    let expiry = record.current.as_ref().map(|c| c.expiry(settings.max_key_age)).unwrap_or(now);
    let entry = AuditEntry {
        at: now,
        org_id: org.clone(),
        action: "adopt".into(),
        actor: actor.to_owned(),
        request_id: None,
        key_ids,
        detail: Some(format!(
            "user {user} with its existing keys; the current key expires at {expiry}{}",
            if other_policies.is_empty() {
                String::new()
            } else {
                format!("; other policies kept: {}", other_policies.join(", "))
            }
        )),
    };
    write_audit(audit, &entry).await;
    Ok(Adopted { created: true, record, other_policies })
}

/// Whether `e` says a member account's role could not be assumed.
fn is_refused_role(e: &PortError) -> bool {
    matches!(e, PortError::Unavailable { service: "sts", .. })
}

/// Undoes the placement of an enrollment that did not create the record: the
/// place in its member account and, unless the record that won names the same
/// account, the user created there (best effort: the daily check reports
/// what is left).
async fn give_back(registry: &dyn Registry, keys: &dyn AccessKeys, spec: &UserSpec, winner: Option<&str>) {
    let Some(account) = spec.account.as_deref() else { return };
    if winner == Some(account) {
        return;
    }
    release(registry, account, &spec.org).await;
    let user = super::domain::IamUser { account: spec.account.clone(), name: spec.user_name.clone() };
    if let Err(e) = keys.delete_user(&user).await {
        tracing::warn!(error = %e, %user, "could not delete the user of an enrollment that lost");
    }
}

fn same_place(record: OrgRecord, settings: &EnrollSettings, prefix: &str) -> Result<Enrolled, EnrollError> {
    if record.bucket == settings.managed_bucket && record.prefix == prefix {
        Ok(Enrolled { created: false, record })
    } else {
        Err(EnrollError::Mismatch {
            org: record.org_id.clone(),
            bucket: record.bucket,
            prefix: record.prefix,
            wanted: format!("{}/{}", settings.managed_bucket, prefix),
        })
    }
}

/// The inline policy of an org's user: list its prefix, read its objects,
/// nothing else. `partition` is the ARNs' (`aws`, `aws-cn`, …): the
/// managed bucket's, which is the partition the service runs in.
pub fn user_policy(partition: &str, bucket: &str, prefix: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListOwnPrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": format!("arn:{partition}:s3:::{bucket}"),
                "Condition": { "StringLike": { "s3:prefix": [prefix, format!("{prefix}*")] } }
            },
            {
                "Sid": "ReadOwnObjects",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": format!("arn:{partition}:s3:::{bucket}/{prefix}*")
            }
        ]
    })
}

/// Whether `principal` may be granted read access to an org's secret: an IAM
/// ARN (`arn:{partition}:iam::{account}:{role|user|root}…`), without
/// wildcards. [`grant_vault_reader`] checks it; the CLI checks every principal
/// it is given with it before it enrolls anything.
pub fn check_reader_principal(principal: &str) -> Result<(), EnrollError> {
    let valid = principal.starts_with("arn:")
        && principal.split(':').nth(2) == Some("iam")
        && principal.split(':').count() == 6
        && principal.len() <= 2048
        && !principal.contains('*');
    if valid {
        Ok(())
    } else {
        Err(EnrollError::BadPrincipal(principal.chars().take(80).collect()))
    }
}

/// Lets the org's own AWS principal read its secret in the key vault (an
/// enrollment option): `principal` is an IAM ARN such as
/// `arn:aws:iam::210987654321:role/log-reader` or an account root.
pub async fn grant_vault_reader(
    vault: &dyn crate::core::ports::KeyVault,
    audit: &dyn AuditLog,
    org: &OrgId,
    principal: &str,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<(), EnrollError> {
    check_reader_principal(principal)?;
    vault.allow_reader(org, principal).await?;
    let entry = AuditEntry {
        at: now,
        org_id: org.clone(),
        action: "grant vault read access".into(),
        actor: actor.to_owned(),
        request_id: None,
        key_ids: Vec::new(),
        detail: Some(format!("principal {principal}")),
    };
    write_audit(audit, &entry).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::memory::{Faults, MemoryAudit, MemoryKeys, MemoryRegistry};

    fn settings() -> EnrollSettings {
        EnrollSettings {
            iam_user_path: "/managed-s3/".into(),
            managed_bucket: "logs".into(),
            prefix_template: "{orgId}/".into(),
            members: Vec::new(),
            orgs_per_account: 4500,
        }
    }

    fn adopt_settings() -> AdoptSettings {
        AdoptSettings {
            enroll: settings(),
            max_key_age: Duration::from_days(90),
            longest_warning: Duration::from_days(14),
            grace: Duration::from_hours(24),
        }
    }

    fn adoption(org: &OrgId) -> Adoption {
        Adoption { org: org.clone(), user_name: None, account: None, expires_at: None }
    }

    /// A user made before the service with one key 100 days old: adopted with
    /// its real creation date, expiring no earlier than adoption plus the
    /// longest warning; its other policy reported and kept; nothing created.
    #[tokio::test]
    async fn an_existing_user_is_adopted_with_its_keys_and_a_migration_window() {
        let faults = Arc::new(Faults::default());
        let (registry, keys, audit) =
            (MemoryRegistry::new(faults.clone()), MemoryKeys::new(faults.clone()), MemoryAudit::new(faults.clone()));
        let now = Utc::now();
        let org = OrgId::parse("4000001").unwrap();
        let old = now - chrono::TimeDelta::days(100);
        let ids = keys.existing_user(None, &org.user_name(), &[(old, true)]);
        let settings = adopt_settings();

        let dry = adopt(&registry, &keys, &audit, &settings, &adoption(&org), now, "op", true).await.unwrap();
        assert!(dry.created && registry.get(&org).is_none(), "a dry run writes nothing");
        assert!(audit.entries().is_empty());

        let done = adopt(&registry, &keys, &audit, &settings, &adoption(&org), now, "op", false).await.unwrap();
        let current = done.record.current.clone().unwrap();
        assert_eq!((current.access_key_id.as_str(), current.created_at), (ids[0].as_str(), old));
        assert_eq!(current.vault_version, None, "the vault holds no secret for an adopted key");
        assert_eq!(current.expiry(settings.max_key_age), now + chrono::TimeDelta::days(14), "the migration window");
        assert_eq!(done.other_policies, ["legacy-full-access"]);
        assert_eq!(registry.get(&org).unwrap(), done.record);
        assert_eq!(keys.keys_of(&org.user_name()).len(), 1, "no key created or deleted");
        let entry = audit.entries().pop().unwrap();
        assert_eq!((entry.action.as_str(), entry.key_ids.clone()), ("adopt", ids.clone()));

        let again = adopt(&registry, &keys, &audit, &settings, &adoption(&org), now, "op", false).await.unwrap();
        assert!(!again.created, "adopting twice changes nothing");
    }

    /// Two keys: the newest active one is current, the other previous (kept
    /// active, retiring after the grace period); a key young enough keeps its
    /// own expiry; `expires_at` may only set a later date within MAX_KEY_AGE.
    #[tokio::test]
    async fn two_keys_become_current_and_previous_and_expiry_bounds_are_checked() {
        let faults = Arc::new(Faults::default());
        let (registry, keys, audit) =
            (MemoryRegistry::new(faults.clone()), MemoryKeys::new(faults.clone()), MemoryAudit::new(faults.clone()));
        let now = Utc::now();
        let org = OrgId::parse("4000002").unwrap();
        let (older, newer) = (now - chrono::TimeDelta::days(40), now - chrono::TimeDelta::days(10));
        let ids = keys.existing_user(None, &org.user_name(), &[(older, true), (newer, true)]);
        let settings = adopt_settings();
        let too_late = Adoption { expires_at: Some(now + chrono::TimeDelta::days(91)), ..adoption(&org) };
        let err = adopt(&registry, &keys, &audit, &settings, &too_late, now, "op", false).await.unwrap_err();
        assert!(err.to_string().contains("MAX_KEY_AGE"), "{err}");
        let too_early = Adoption { expires_at: Some(now + chrono::TimeDelta::days(30)), ..adoption(&org) };
        let err = adopt(&registry, &keys, &audit, &settings, &too_early, now, "op", false).await.unwrap_err();
        assert!(err.to_string().contains("not later than the key's own expiry"), "{err}");
        assert!(registry.get(&org).is_none());

        let done = adopt(&registry, &keys, &audit, &settings, &adoption(&org), now, "op", false).await.unwrap();
        let (current, previous) = (done.record.current.unwrap(), done.record.previous.unwrap());
        assert_eq!((current.access_key_id.as_str(), current.version), (ids[1].as_str(), 2));
        assert_eq!(current.expiry(settings.max_key_age), newer + chrono::TimeDelta::days(90), "its own expiry");
        assert_eq!(previous.key.access_key_id, ids[0]);
        assert_eq!((previous.is_active(), previous.retire_at()), (true, now + chrono::TimeDelta::hours(24)));
    }

    /// A plain enrollment of an org whose user already holds keys is refused
    /// with a message that names --adopt; nothing is created or deleted.
    #[tokio::test]
    async fn a_plain_enrollment_of_a_user_with_keys_is_refused() {
        let faults = Arc::new(Faults::default());
        let (registry, keys, audit) =
            (MemoryRegistry::new(faults.clone()), MemoryKeys::new(faults.clone()), MemoryAudit::new(faults.clone()));
        let org = OrgId::parse("4000003").unwrap();
        let ids = keys.existing_user(None, &org.user_name(), &[(Utc::now(), true)]);
        let err = enroll(&registry, &keys, &audit, &settings(), &org, Utc::now(), "op").await.unwrap_err();
        assert!(err.to_string().contains("enroll --adopt"), "{err}");
        assert!(registry.get(&org).is_none());
        let left: Vec<String> = keys.keys_of(&org.user_name()).into_iter().map(|k| k.access_key_id).collect();
        assert_eq!(left, ids);
    }

    /// Three member accounts of two places: six orgs go round them by room,
    /// each user in its account and each record naming it; the seventh is
    /// refused with a message that says what to do.
    #[tokio::test]
    async fn orgs_are_placed_in_the_member_account_with_the_most_room() {
        let faults = Arc::new(Faults::default());
        let (registry, keys, audit) =
            (MemoryRegistry::new(faults.clone()), MemoryKeys::new(faults.clone()), MemoryAudit::new(faults.clone()));
        let members: Vec<MemberRole> = ["111111111111", "222222222222", "333333333333"]
            .iter()
            .map(|a| MemberRole::parse(&format!("arn:aws:iam::{a}:role/member")).unwrap())
            .collect();
        let settings = EnrollSettings { members: members.clone(), orgs_per_account: 2, ..settings() };
        let now = Utc::now();
        let mut placed = Vec::new();
        for i in 1..=6 {
            let org = OrgId::parse(&format!("org{i}")).unwrap();
            let done = enroll(&registry, &keys, &audit, &settings, &org, now, "op").await.unwrap();
            let account = done.record.account_id.clone().expect("placed in a member account");
            assert_eq!(keys.account_of(&org.user_name()), Some(Some(account.clone())), "the user is in that account");
            placed.push(account);
        }
        assert_eq!(
            placed,
            ["111111111111", "222222222222", "333333333333", "111111111111", "222222222222", "333333333333"]
        );
        let seventh = OrgId::parse("org7").unwrap();
        let err = enroll(&registry, &keys, &audit, &settings, &seventh, now, "op").await.unwrap_err().to_string();
        assert!(err.contains("every member account is full") && err.contains("MEMBER_ACCOUNT_ROLES"), "{err}");
        assert!(registry.get(&seventh).is_none() && !keys.user_exists(&seventh.user_name()));
        // Enrolling an enrolled org again takes no second place.
        let again = enroll(&registry, &keys, &audit, &settings, &OrgId::parse("org1").unwrap(), now, "op").await;
        assert!(!again.unwrap().created);
    }

    #[test]
    fn the_policy_reads_only_the_orgs_prefix() {
        let policy = user_policy("aws", "logs", "42/");
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0]["Action"], "s3:ListBucket");
        assert_eq!(statements[0]["Resource"], "arn:aws:s3:::logs");
        assert_eq!(statements[0]["Condition"]["StringLike"]["s3:prefix"], serde_json::json!(["42/", "42/*"]));
        assert_eq!(statements[1]["Action"], "s3:GetObject");
        assert_eq!(statements[1]["Resource"], "arn:aws:s3:::logs/42/*");
        let text = policy.to_string();
        assert!(!text.contains("\"*\""), "no wildcard action or resource: {text}");
        assert!(!text.contains("Put") && !text.contains("Delete"), "read only: {text}");
    }

    #[test]
    fn the_policy_names_the_bucket_in_the_partition_the_service_runs_in() {
        let policy = user_policy("aws-cn", "logs", "42/");
        assert_eq!(policy["Statement"][0]["Resource"], "arn:aws-cn:s3:::logs");
        assert_eq!(policy["Statement"][1]["Resource"], "arn:aws-cn:s3:::logs/42/*");
    }

    #[tokio::test]
    async fn enrolling_twice_changes_nothing() {
        let faults = Arc::new(Faults::default());
        let (registry, keys, audit) =
            (MemoryRegistry::new(faults.clone()), MemoryKeys::new(faults.clone()), MemoryAudit::new(faults.clone()));
        let org = OrgId::parse("42").unwrap();
        let now = Utc::now();
        let first = enroll(&registry, &keys, &audit, &settings(), &org, now, "op").await.unwrap();
        assert!(first.created);
        assert_eq!(first.record.prefix, "42/");
        assert!(first.record.current.is_none());
        let stored = registry.get(&org).unwrap();
        let second = enroll(&registry, &keys, &audit, &settings(), &org, now, "op").await.unwrap();
        assert!(!second.created);
        assert_eq!(registry.get(&org).unwrap(), stored);
        assert_eq!(audit.entries().len(), 1);

        // The org's own principal may read its secret; nothing vaguer.
        let vault = crate::core::memory::MemoryVault::new(faults.clone());
        let reader = "arn:aws:iam::210987654321:role/log-reader";
        grant_vault_reader(&vault, &audit, &org, reader, now, "op").await.unwrap();
        assert_eq!(vault.reader(&org).as_deref(), Some(reader));
        for bad in ["*", "arn:aws:iam::*:root", "210987654321", "arn:aws:s3:::logs"] {
            let err = grant_vault_reader(&vault, &audit, &org, bad, now, "op").await.unwrap_err();
            assert!(err.to_string().contains("is not an IAM principal ARN"), "{bad}: {err}");
        }
        // Enrolling the same org elsewhere is refused, not silently ignored.
        let elsewhere = EnrollSettings { managed_bucket: "other".into(), ..settings() };
        let err = enroll(&registry, &keys, &audit, &elsewhere, &org, now, "op").await.unwrap_err();
        assert!(err.to_string().contains("enrolled already"), "{err}");
    }
}
