//! The spans of a command: `command` around each try of an outermost command (a nested
//! command's as a child), `invalidation` around its invalidation pass.
//!
//! One test in a binary of its own: `tracing` caches, per call site, whether any subscriber is
//! interested, and a subscriber installed for one thread (as here) races with the other tests'
//! threads over that cache.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, invalidate,
    service,
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "telemetry_test.bump")]
struct Bump {
    fail: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "telemetry_test.outer")]
struct Outer;

#[derive(Debug, thiserror::Error)]
#[error("refused")]
struct Refused;

struct Bumps {
    hub: Hub,
    value: AtomicU64,
}

impl ComputeService for Bumps {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Bumps {
    #[compute_method]
    async fn get(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }

    #[command_handler]
    async fn bump(&self, command: Bump, _ctx: &CommandContext) -> Result<u64, Refused> {
        invalidate! {
            self.get();
        }
        if command.fail {
            return Err(Refused);
        }
        Ok(self.value.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[command_handler]
    async fn outer(&self, _command: Outer, _ctx: &CommandContext) -> Result<(), ofx_core::Error> {
        self.hub.commander().call(Bump { fail: false }).await?;
        Ok(())
    }
}

/// A span seen: its name, its fields as `name=value` text, and its parent's (looked up when
/// it was created: span ids are reused once a span closes).
#[derive(Debug, Clone)]
struct SeenSpan {
    name: &'static str,
    fields: String,
    parent: Option<(&'static str, String)>,
}

/// A layer that records every span created.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(tracing::span::Id, SeenSpan)>>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = String::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent().map(|parent| parent.id()));
        let mut seen = self.0.lock().unwrap();
        let parent = parent.and_then(|parent| {
            seen.iter()
                .rev()
                .find(|(seen_id, _)| *seen_id == parent)
                .map(|(_, span)| (span.name, span.fields.clone()))
        });
        let span = SeenSpan {
            name: attrs.metadata().name(),
            fields,
            parent,
        };
        seen.push((id.clone(), span));
    }
}

#[tokio::test]
async fn a_command_runs_in_its_span_and_its_invalidation_in_a_child_span() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let hub = Hub::builder().metrics_interval(None).build().unwrap();
    let bumps = Arc::new(Bumps {
        hub: hub.clone(),
        value: AtomicU64::new(0),
    });
    hub.add_service(&bumps).unwrap();
    let executed = hub.commander().call_committed(Outer).await.unwrap();
    let uuid = executed.operation.to_string();

    let seen: Vec<SeenSpan> = spans
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, span)| span.clone())
        .collect();
    let with_uuid = |name: &str| -> Vec<&SeenSpan> {
        seen.iter()
            .filter(|span| span.name == name && span.fields.contains(&uuid))
            .collect()
    };
    let commands = with_uuid("command");
    assert_eq!(
        commands.len(),
        2,
        "the outer command's span and the nested one's: {seen:#?}"
    );
    let outer = commands
        .iter()
        .find(|span| span.fields.contains("telemetry_test.outer"))
        .unwrap();
    assert!(outer.fields.contains("nested=false"), "{outer:?}");
    let nested = commands
        .iter()
        .find(|span| span.fields.contains("telemetry_test.bump"))
        .unwrap();
    assert!(nested.fields.contains("nested=true"), "{nested:?}");
    assert_eq!(
        nested.parent,
        Some(("command", outer.fields.clone())),
        "the nested command's span is a child"
    );
    let invalidations = with_uuid("invalidation");
    assert_eq!(invalidations.len(), 1, "{seen:#?}");
    assert!(invalidations[0].fields.contains("local=true"));
    assert_eq!(
        invalidations[0].parent,
        Some(("command", outer.fields.clone())),
        "the invalidation pass runs in the command's span"
    );
}
