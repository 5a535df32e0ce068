//! Evidence: the JSON object that records how a link was proven. It arrives as a `jsonb`
//! argument and is kept only inside event payloads (and queued jobs, until they bind).

use crate::errors::IdentityError;
use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::prelude::*;
use serde_json::Value;
use std::ffi::CStr;

/// The deepest nesting of objects and arrays that evidence may have: serde_json's reader refuses
/// a 128th level (its guard against running out of stack).
pub const MAX_EVIDENCE_DEPTH: usize = 127;

/// A `jsonb` argument read as evidence. pgrx's `JsonB` panics on a value its reader refuses,
/// which PostgreSQL then reports as an internal error (XX000); this keeps the refusal for
/// `evidence_object` to report as what it is, bad input (22023).
pub struct EvidenceArg(Result<Value, String>);

impl FromDatum for EvidenceArg {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // SAFETY: a non-NULL jsonb datum, as every SQL declaration of an evidence argument says;
        // jsonb_out detoasts it and returns a palloc'd C string.
        let text =
            unsafe { pgrx::direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(datum)]) }?;
        let read = match text.to_str() {
            Ok(json) => serde_json::from_str(json).map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        // SAFETY: the string jsonb_out allocated, read in full above and not used again.
        unsafe { pg_sys::pfree(text.as_ptr().cast_mut().cast()) };
        Some(EvidenceArg(read))
    }
}

// SAFETY: unboxes through FromDatum, as pgrx does for its own JsonB.
unsafe impl<'fcx> ArgAbi<'fcx> for EvidenceArg {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: pgrx calls this only for an argument of this type, which is a jsonb datum.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

// SAFETY: the SQL type is jsonb, whose datums FromDatum above reads.
unsafe impl SqlTranslatable for EvidenceArg {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(EvidenceArg);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}

/// Evidence is a JSON object: a record of how the link was proven, never a bare value.
pub fn evidence_object(evidence: EvidenceArg) -> Result<Value, IdentityError> {
    let evidence = evidence.0.map_err(unreadable)?;
    let found = match &evidence {
        Value::Object(_) => return Ok(evidence),
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
    };
    Err(IdentityError::InvalidEvidence { found })
}

/// Why the reader refused a jsonb value, which PostgreSQL printed as valid JSON: it nests too
/// deeply. Any other reason would be a bug.
fn unreadable(reason: String) -> IdentityError {
    if reason.starts_with("recursion limit exceeded") {
        IdentityError::EvidenceTooDeep
    } else {
        IdentityError::Internal(format!("evidence could not be read: {reason}"))
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::MAX_EVIDENCE_DEPTH;
    use crate::testing::error_of;
    use pgrx::prelude::*;

    /// A JSON object whose arrays take it `depth` levels deep in all.
    fn nested(depth: usize) -> String {
        let arrays = depth - 1;
        format!(
            r#"{{"chain": {}{}}}"#,
            "[".repeat(arrays),
            "]".repeat(arrays)
        )
    }

    #[pg_test]
    fn evidence_nested_as_deep_as_allowed_is_kept_whole() {
        crate::testing::take_turns();
        let evidence = nested(MAX_EVIDENCE_DEPTH);
        Spi::run_with_args(
            "SELECT identity.create_binding('00000000-0000-4000-8000-00000000d1e9', 'github', '1', $1::jsonb)",
            &[evidence.as_str().into()],
        )
        .unwrap();
        let kept = Spi::get_one_with_args::<bool>(
            "SELECT payload->'evidence' = $1::jsonb FROM identity.identity_events",
            &[evidence.as_str().into()],
        );
        assert_eq!(kept, Ok(Some(true)));
    }

    #[pg_test]
    fn evidence_nested_deeper_is_bad_input_for_every_function_that_takes_it() {
        crate::testing::take_turns();
        let too_deep = nested(MAX_EVIDENCE_DEPTH + 1);
        let calls = [
            "SELECT identity.create_binding('00000000-0000-4000-8000-00000000d1e9', 'github', '1', '{evidence}')",
            "SELECT identity.enqueue_binding('00000000-0000-4000-8000-00000000d1e9', 'github', '1', '{evidence}')",
            "SELECT identity.revoke_binding('github', '1', '{evidence}')",
            "SELECT identity.merge_users('00000000-0000-4000-8000-00000000d1e9',
                                         '00000000-0000-4000-8000-00000000d1ea', '{evidence}')",
        ];
        for call in calls {
            let (sqlstate, message) = error_of(&call.replace("{evidence}", &too_deep));
            assert_eq!(
                (sqlstate.as_str(), message.as_str()),
                (
                    "22023",
                    "evidence nests objects and arrays more than 127 levels deep"
                ),
                "{call}"
            );
        }
        let written = Spi::get_one::<i64>(
            "SELECT (SELECT count(*) FROM identity.identity_events)
                  + (SELECT count(*) FROM identity.binding_jobs)",
        );
        assert_eq!(written, Ok(Some(0)));
    }
}
