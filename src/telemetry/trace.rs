//! W3C trace context (`traceparent`) across the outbox: a publish records the current span
//! context into the message's headers, and the relay continues it in its handler span and
//! copies it to the Redis entry.
//!
//! ```text
//!  app span ──publish_in_tx──▶ headers.traceparent ──relay──▶ span `outbox.handle` (remote parent)
//!                                                        └──▶ XADD … traceparent <same value>
//! ```
//! The current context is the `tracing` span's (when a `tracing-opentelemetry` layer is
//! installed), else OpenTelemetry's own current context. With neither, nothing is recorded
//! and nothing is allocated.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and stream entry field) carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The current span context as a `traceparent` value, if there is a valid one.
pub fn current_traceparent() -> Option<String> {
    let span = tracing::Span::current();
    if !span.is_disabled()
        && let Some(value) = format(span.context().span().span_context())
    {
        return Some(value);
    }
    format(opentelemetry::Context::current().span().span_context())
}

/// `00-<trace id>-<span id>-<flags>` for a valid span context.
pub fn format(context: &SpanContext) -> Option<String> {
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// Parses a `traceparent` value (version 00 and the forward-compatible later versions) into
/// a remote span context; `None` if it is malformed or all-zero.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let version = parts.next().filter(|v| v.len() == 2 && *v != "ff")?;
    let trace_id = parts.next().filter(|t| t.len() == 32 && is_lower_hex(t))?;
    let span_id = parts.next().filter(|s| s.len() == 16 && is_lower_hex(s))?;
    let flags = parts.next().filter(|f| f.len() == 2 && is_lower_hex(f))?;
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The context to parent a span on, for a message carrying `traceparent`.
pub fn remote_context(traceparent: &str) -> Option<opentelemetry::Context> {
    parse(traceparent).map(|span| opentelemetry::Context::new().with_remote_span_context(span))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let context = parse(VALUE).expect("valid");
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context.is_remote());
        assert!(context.trace_flags().is_sampled());
        assert_eq!(format(&context).as_deref(), Some(VALUE));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some());
    }

    #[test]
    fn nothing_is_current_without_a_context() {
        assert_eq!(current_traceparent(), None);
        let context = parse(VALUE).expect("valid");
        let _attached = opentelemetry::Context::new()
            .with_remote_span_context(context)
            .attach();
        assert_eq!(current_traceparent().as_deref(), Some(VALUE));
    }
}
