//! A host without an event processor: its events are run by another host's.

use std::time::Duration;

use ofx_diesel::EventState;

use crate::common::{EventSpec, Host, JobQueries, fast};

async fn events_of_a_host_without_a_processor_are_run_by_another<B: JobQueries>(url: &str) {
    let mut settings = fast();
    settings.events.process = false;
    let a = Host::<B>::open(url, settings).await;
    assert!(
        a.db.event_processor(a.hub()).is_none(),
        "A runs no processor"
    );
    let job = 9_001;
    let uuids = a.produce(job, 5, EventSpec::default()).await.unwrap();

    let b = Host::<B>::open(url, fast()).await;
    b.drained(Duration::from_secs(10)).await;
    assert_eq!(b.processor().stats().completed(), 5);
    let b_id = b.hub().host_id().to_string();
    let effects = a.effect_rows(job).await;
    assert_eq!(effects.len(), 5);
    assert!(
        effects.iter().all(|effect| effect.host == b_id),
        "{effects:?}"
    );
    for uuid in uuids {
        let event = a.event(uuid).await;
        assert_eq!(event.state, Some(EventState::Done));
        assert_eq!(
            event.host_id,
            a.hub().host_id().to_string(),
            "produced by A"
        );
    }
}

backend_tests! {
    events_of_a_host_without_a_processor_are_run_by_another =>
        sqlite_events_of_a_host_without_a_processor_are_run_by_another,
        postgres_events_of_a_host_without_a_processor_are_run_by_another;
}
