//! The process's `tracing` setup: human text or JSON lines on stderr, filtered by `RUST_LOG`
//! (or a default), and — with the `otlp` cargo feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set
//! — spans exported over OTLP/HTTP.
//!
//! JSON lines put the event's fields at the top level (`timestamp`, `level`, `message`,
//! `group`, `topic`, `position`, …, plus the current span under `span`), one object a line.

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The log subscriber could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// A global subscriber (or `log` logger) was installed already.
    #[error("could not install the log subscriber")]
    Install(#[source] tracing_subscriber::util::TryInitError),
    /// The OTLP exporter could not be built (`otlp` feature).
    #[error("could not set up the OTLP span exporter: {0}")]
    Otlp(String),
}

/// Keeps the exporters alive; dropping it flushes the spans not yet exported.
#[must_use = "dropping the guard stops span export"]
pub struct LoggingGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for LoggingGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: flushing the OTLP spans failed: {error}");
        }
    }
}

type Base = Layered<EnvFilter, Registry>;
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// Installs the global subscriber: `format` on stderr (ANSI colours when `ansi`), filtered by
/// `RUST_LOG` or else `default_filter`.
pub fn init(
    format: Format,
    default_filter: &str,
    ansi: bool,
) -> Result<LoggingGuard, LoggingError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    #[cfg(feature = "otlp")]
    let provider = otlp::provider()?;
    #[cfg(feature = "otlp")]
    let otel = provider.as_ref().map(otlp::layer);
    #[cfg(not(feature = "otlp"))]
    let otel: Option<BoxedLayer> = None;
    let layers: Vec<BoxedLayer> = std::iter::once(fmt_layer(format, ansi))
        .chain(otel)
        .collect();
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(LoggingError::Install)?;
    Ok(LoggingGuard {
        #[cfg(feature = "otlp")]
        provider,
    })
}

fn fmt_layer(format: Format, ansi: bool) -> BoxedLayer {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        Format::Text => layer.with_ansi(ansi).boxed(),
        Format::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    //! OTLP/HTTP span export, configured by the standard `OTEL_EXPORTER_OTLP_*` variables.

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    use super::{BoxedLayer, LoggingError};

    /// A tracer provider exporting in batches, when an OTLP endpoint is configured.
    pub(super) fn provider() -> Result<Option<SdkTracerProvider>, LoggingError> {
        let configured = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        if !configured {
            return Ok(None);
        }
        // reqwest is built without a default TLS crypto provider; use ring, as the rest of
        // the binary does (a no-op when one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| LoggingError::Otlp(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("outbox-relay")
            .build();
        Ok(Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        ))
    }

    pub(super) fn layer(provider: &SdkTracerProvider) -> BoxedLayer {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("outbox-relay"))
            .boxed()
    }
}
