//! Status conditions: the condition types each resource reports, the reasons they carry,
//! and how a condition is set. Types and reasons are stable API (`kubectl wait`, alerts,
//! `runbooks/operator.md` has a section for each), so they are enums with fixed string
//! forms rather than literals.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::context::truncate;

/// Longest condition message kept (the API allows 32 KiB; `kubectl describe` wants less).
const CONDITION_MESSAGE_MAX: usize = 4096;

/// Declares a fieldless enum whose variants have fixed string forms.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The string form written to the API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value whose string form is `s`.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// A condition type.
    ConditionType {
        /// TracingPipeline: every other condition is True.
        Ready => "Ready",
        /// TracingPipeline: the ConfigMap holds a valid configuration.
        ConfigurationGenerated => "ConfigurationGenerated",
        /// TracingPipeline: every child object is written, and all are this pipeline's own.
        ResourcesApplied => "ResourcesApplied",
        /// TracingPipeline: the collector Deployment has its replicas available.
        CollectorAvailable => "CollectorAvailable",
        /// TracingPipeline: the query Deployment has its replicas available.
        QueryAvailable => "QueryAvailable",
        /// TracingPipeline: ClickHouse has the requested retention.
        RetentionApplied => "RetentionApplied",
        /// TracingPipeline: the operator reconciles it (`spec.managementState: Managed`);
        /// False while it is paused.
        Managed => "Managed",
        /// SamplingPolicy: the rules are valid.
        Accepted => "Accepted",
    }
}

impl ConditionType {
    /// TracingPipeline conditions that must be True for `Ready`, in the order `Ready`
    /// reports the first one that is not.
    pub const READY_REQUIRES: [ConditionType; 5] = [
        ConditionType::ConfigurationGenerated,
        ConditionType::ResourcesApplied,
        ConditionType::CollectorAvailable,
        ConditionType::QueryAvailable,
        ConditionType::RetentionApplied,
    ];
}

string_enum! {
    /// Why a condition has its status.
    Reason {
        /// All good.
        Reconciled => "Reconciled",
        /// A selected SamplingPolicy is invalid; the previous configuration stays.
        InvalidSamplingPolicy => "InvalidSamplingPolicy",
        /// The spec renders a configuration the collector would refuse.
        InvalidConfiguration => "InvalidConfiguration",
        /// The referenced password Secret or key does not exist.
        SecretNotFound => "SecretNotFound",
        /// The operator may not read the referenced Secret (the namespace has not granted
        /// it: runbooks/operator.md, "Secret access").
        SecretForbidden => "SecretForbidden",
        /// An object with a child's name exists and is not this pipeline's; nothing applied.
        NameConflict => "NameConflict",
        /// The API server refused a child object.
        ApplyFailed => "ApplyFailed",
        /// Fewer available replicas than desired.
        ReplicasUnavailable => "ReplicasUnavailable",
        /// All desired replicas are available.
        ReplicasAvailable => "ReplicasAvailable",
        /// Scaled to zero on purpose.
        ScaledToZero => "ScaledToZero",
        /// ClickHouse did not answer; retried with backoff.
        ClickHouseUnreachable => "ClickHouseUnreachable",
        /// ClickHouse refused the credentials.
        ClickHouseAuthFailed => "ClickHouseAuthFailed",
        /// ClickHouse answered with an error (schema, permissions).
        ClickHouseError => "ClickHouseError",
        /// Retention applied.
        RetentionSet => "RetentionSet",
        /// The ClickHouse database belongs to another pipeline; left alone.
        StorageConflict => "StorageConflict",
        /// The schema or TTLs in ClickHouse differ from the spec (changed outside the
        /// operator); being repaired.
        StorageDrift => "StorageDrift",
        /// `spec.managementState: Unmanaged`: reconciliation is paused.
        Unmanaged => "Unmanaged",
        /// A condition `Ready` depends on has not been reported yet.
        Progressing => "Progressing",
        /// SamplingPolicy valid.
        Valid => "Valid",
        /// SamplingPolicy invalid.
        Invalid => "Invalid",
    }
}

string_enum! {
    /// The reason of an event the operator publishes (stable like condition reasons).
    EventReason {
        /// Retention was applied to ClickHouse.
        RetentionApplied => "RetentionApplied",
        /// A new configuration rolls the pods.
        ConfigurationChanged => "ConfigurationChanged",
        /// A new sampling configuration reaches the collectors.
        SamplingPolicyApplied => "SamplingPolicyApplied",
        /// A selected SamplingPolicy (or the policy itself) is invalid.
        InvalidSamplingPolicy => "InvalidSamplingPolicy",
        /// The spec renders a configuration the collector would refuse.
        InvalidConfiguration => "InvalidConfiguration",
        /// Writing a child object failed.
        ApplyFailed => "ApplyFailed",
        /// An object with a child's name exists and is not this pipeline's.
        NameConflict => "NameConflict",
        /// Dropping the ClickHouse database of a deleted pipeline failed.
        DeleteStorageFailed => "DeleteStorageFailed",
        /// Retention could not be applied: ClickHouse did not answer.
        ClickHouseUnreachable => "ClickHouseUnreachable",
        /// Retention could not be applied: ClickHouse refused the credentials.
        ClickHouseAuthFailed => "ClickHouseAuthFailed",
        /// Retention could not be applied: ClickHouse answered with an error.
        ClickHouseError => "ClickHouseError",
        /// Retention could not be applied: the password Secret or key is missing.
        SecretNotFound => "SecretNotFound",
        /// Retention could not be applied: the operator may not read the password Secret.
        SecretForbidden => "SecretForbidden",
        /// The ClickHouse database belongs to another pipeline.
        StorageConflict => "StorageConflict",
        /// The schema or TTLs in ClickHouse differ from the spec; being repaired.
        StorageDrift => "StorageDrift",
        /// `spec.managementState` became `Unmanaged`: reconciliation paused.
        ReconciliationPaused => "ReconciliationPaused",
        /// `spec.managementState` became `Managed` again: reconciliation resumed.
        ReconciliationResumed => "ReconciliationResumed",
    }
}

/// `"True"` or `"False"`.
fn status_text(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

/// Sets a condition, keeping `lastTransitionTime` when the status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    ok: bool,
    reason: Reason,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = status_text(ok);
    let message = truncate(message.into(), CONDITION_MESSAGE_MAX);
    let previous = find(conditions, type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let c = Condition {
        type_: type_.as_str().into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_.as_str()) {
        Some(slot) => *slot = c,
        None => conditions.push(c),
    }
}

/// The condition of type `type_`, if set.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Whether the condition of type `type_` is set and True.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Whether the condition of type `type_` is already `ok` with this reason and message (so
/// an event about it was published before).
pub fn already(
    conditions: &[Condition],
    type_: ConditionType,
    ok: bool,
    reason: Reason,
    message: &str,
) -> bool {
    find(conditions, type_).is_some_and(|c| {
        c.status == status_text(ok) && c.reason == reason.as_str() && c.message == message
    })
}

/// `Ready` for a TracingPipeline: True when every condition it requires is True, else
/// False with the reason and message of the first one that is not.
pub fn ready(conditions: &[Condition]) -> (bool, Reason, String) {
    let blocking = ConditionType::READY_REQUIRES.into_iter().find_map(|t| {
        let c = find(conditions, t);
        match c {
            Some(c) if c.status == "True" => None,
            Some(c) => Some((
                Reason::parse(&c.reason).unwrap_or(Reason::Progressing),
                format!("{t}: {}", c.message),
            )),
            None => Some((Reason::Progressing, format!("{t}: not reported yet"))),
        }
    });
    match blocking {
        None => (
            true,
            Reason::Reconciled,
            "all components available, configuration and retention applied".into(),
        ),
        Some((reason, message)) => (false, reason, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_transition_time_until_status_changes() {
        let mut cs = Vec::new();
        let ready = ConditionType::Ready;
        set_condition(&mut cs, ready, false, Reason::Progressing, "m", Some(1));
        let epoch = Time(Timestamp::UNIX_EPOCH);
        cs[0].last_transition_time = epoch.clone();
        set_condition(&mut cs, ready, false, Reason::Invalid, "m2", Some(2));
        assert_eq!(cs.len(), 1);
        assert_eq!(
            cs[0].last_transition_time, epoch,
            "same status keeps the time"
        );
        assert_eq!(cs[0].reason, "Invalid");
        set_condition(&mut cs, ready, true, Reason::Reconciled, "ok", Some(2));
        assert_ne!(
            cs[0].last_transition_time, epoch,
            "a new status is a transition"
        );
    }

    #[test]
    fn string_forms_round_trip_and_are_distinct() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
        for t in ConditionType::ALL {
            assert_eq!(ConditionType::parse(t.as_str()), Some(*t));
        }
        for e in EventReason::ALL {
            assert_eq!(EventReason::parse(e.as_str()), Some(*e));
        }
        assert_eq!(Reason::parse("Bogus"), None);
    }

    #[test]
    fn ready_repeats_the_first_condition_that_is_not_true() {
        let mut cs = Vec::new();
        let (ok, reason, msg) = ready(&cs);
        assert!(!ok);
        assert_eq!(reason, Reason::Progressing);
        assert!(msg.starts_with("ConfigurationGenerated"), "{msg}");
        for t in ConditionType::READY_REQUIRES {
            set_condition(&mut cs, t, true, Reason::Reconciled, "fine", None);
        }
        assert!(ready(&cs).0);
        set_condition(
            &mut cs,
            ConditionType::RetentionApplied,
            false,
            Reason::ClickHouseAuthFailed,
            "wrong password",
            None,
        );
        set_condition(
            &mut cs,
            ConditionType::QueryAvailable,
            false,
            Reason::ReplicasUnavailable,
            "0/1",
            None,
        );
        assert_eq!(
            ready(&cs),
            (
                false,
                Reason::ReplicasUnavailable,
                "QueryAvailable: 0/1".to_string()
            )
        );
    }

    #[test]
    fn the_runbook_explains_every_reason() {
        let runbook = include_str!("../../../runbooks/operator.md");
        for r in Reason::ALL {
            assert!(
                runbook.contains(&format!("`{r}`")),
                "runbooks/operator.md does not explain condition reason {r}"
            );
        }
        for e in [
            EventReason::ApplyFailed,
            EventReason::NameConflict,
            EventReason::DeleteStorageFailed,
        ] {
            assert!(
                runbook.contains(&format!("`{e}`")),
                "runbooks/operator.md does not mention event {e}"
            );
        }
    }
}
