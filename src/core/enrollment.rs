//! Enrollment: an org gets an IAM user that can read only its own prefix of
//! the managed bucket, and a registry record in state `Enabled` with no key
//! yet (its first manual rotation issues the first key).

use chrono::{DateTime, Utc};
use tracing::info;

use super::accounts::{place, release, MemberRole, PlacementError};
use super::domain::{OrgId, OrgRecord};
use super::ports::{AccessKeys, AuditEntry, AuditLog, PortError, Registry, UserSpec};
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
        match keys.ensure_user(&spec).await {
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
/// nothing else.
pub fn user_policy(bucket: &str, prefix: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListOwnPrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": format!("arn:aws:s3:::{bucket}"),
                "Condition": { "StringLike": { "s3:prefix": [prefix, format!("{prefix}*")] } }
            },
            {
                "Sid": "ReadOwnObjects",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::{bucket}/{prefix}*")
            }
        ]
    })
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
    let valid = principal.starts_with("arn:")
        && principal.split(':').nth(2) == Some("iam")
        && principal.split(':').count() == 6
        && principal.len() <= 2048
        && !principal.contains('*');
    if !valid {
        return Err(EnrollError::BadPrincipal(principal.chars().take(80).collect()));
    }
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
        let policy = user_policy("logs", "42/");
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
