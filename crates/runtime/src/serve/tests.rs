use std::time::Instant;

use http_body_util::Full;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::*;

const GET: &[u8] = b"GET /x HTTP/1.1\r\nhost: test\r\n\r\n";

/// A server with `limits` whose handler answers after `delay`; its address and its stop.
async fn start(limits: Limits, delay: Duration) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(
        "test",
        listener,
        Plain,
        limits,
        move |_request, peer| async move {
            tokio::time::sleep(delay).await;
            Response::new(Full::new(Bytes::from(format!("hello {}", peer.ip()))))
        },
        async move {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

/// Reads until the peer closes or `within` passes; what was read.
async fn read_all(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Reads one response (until its body, which the test handler ends with the peer address).
async fn read_response(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    while !String::from_utf8_lossy(&out).contains("hello 127.0.0.1") {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn a_silent_or_idle_connection_is_closed_after_the_header_timeout() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, _stop) = start(limits, Duration::ZERO).await;
    // Says nothing: closed.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    assert!(
        read_all(&mut silent, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Half a head, then nothing: closed.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /x HTTP/1.1\r\nhost:").await.unwrap();
    assert!(read_all(&mut slow, Duration::from_secs(5)).await.is_some());
    // A served keep-alive connection left idle: closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(GET).await.unwrap();
    assert!(
        read_response(&mut idle, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert!(read_all(&mut idle, Duration::from_secs(5)).await.is_some());
}

/// At the cap, a new connection takes the place of the one idle longest; a busy one (a
/// request in flight) is never cut, and when all are busy the new one waits for one to end.
#[tokio::test]
async fn at_the_cap_the_longest_idle_connection_makes_way_and_busy_ones_stay() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (addr, _stop) = start(limits, Duration::from_millis(1500)).await;
    // Two silent connections fill the cap.
    let mut first = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A third, with a request: served; the first (idle longest) is closed, the second stays.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(GET).await.unwrap();
    assert!(
        read_all(&mut first, Duration::from_secs(2)).await.is_some(),
        "the first was kept"
    );
    assert_eq!(
        read_all(&mut second, Duration::from_millis(200)).await,
        None,
        "the second was closed"
    );
    // While the third's request is in flight, a fourth closes the second, not the third.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    fourth.write_all(GET).await.unwrap();
    assert!(
        read_all(&mut second, Duration::from_secs(2))
            .await
            .is_some()
    );
    assert!(
        read_response(&mut third, Duration::from_secs(5))
            .await
            .is_some(),
        "the busy one was cut"
    );
    assert!(
        read_response(&mut fourth, Duration::from_secs(5))
            .await
            .is_some()
    );
}

/// All busy: a new connection waits (unserved, not refused) until one ends.
#[tokio::test]
async fn when_every_connection_is_busy_a_new_one_waits_for_one_to_end() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let (addr, _stop) = start(limits, Duration::from_millis(800)).await;
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(GET).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting.write_all(GET).await.unwrap();
    assert!(
        read_response(&mut busy, Duration::from_secs(5))
            .await
            .is_some()
    );
    // The busy one is idle now (keep-alive): the waiting one takes its place.
    assert!(
        read_response(&mut waiting, Duration::from_secs(5))
            .await
            .is_some()
    );
}

/// The slow-loris: far more connections held open (silent, or a head never finished) than
/// the cap. A real client still gets its answer at once, because it is the newest; the
/// attacker's connections are the ones closed.
#[tokio::test]
async fn held_connections_beyond_the_cap_do_not_lock_a_client_out() {
    let limits = Limits {
        max_connections: 64,
        ..Limits::default()
    };
    let (addr, _stop) = start(limits, Duration::ZERO).await;
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            stream.write_all(b"GET /x HTTP/1.1\r\nhost:").await.unwrap();
        }
        held.push(stream);
    }
    for _ in 0..5 {
        let started = Instant::now();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(GET).await.unwrap();
        assert!(
            read_response(&mut client, Duration::from_secs(5))
                .await
                .is_some(),
            "a client was locked out by {} held connections",
            held.len()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_takes_no_new_one() {
    let (addr, stop) = start(Limits::default(), Duration::from_millis(400)).await;
    let mut in_flight = TcpStream::connect(addr).await.unwrap();
    in_flight.write_all(GET).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let answered = read_all(&mut in_flight, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answered.contains("hello 127.0.0.1"), "{answered}");
    // The listener is closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

/// Counts the `request` spans created and keeps the path of the last.
#[derive(Clone, Default)]
struct RequestSpans(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RequestSpans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Path(String);
        impl tracing::field::Visit for Path {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "path" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if attrs.metadata().name() == "request" {
            let mut path = Path(String::new());
            attrs.record(&mut path);
            self.0.lock().unwrap().push(path.0);
        }
    }
}

#[tokio::test]
async fn a_request_span_exists_at_its_level_and_not_below_the_log_level() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = RequestSpans::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    for (level, expected) in [(tracing::Level::INFO, 1), (tracing::Level::DEBUG, 0)] {
        spans.0.lock().unwrap().clear();
        let limits = Limits {
            request_span: level,
            ..Limits::default()
        };
        let (addr, _stop) = start(limits, Duration::ZERO).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(GET).await.unwrap();
        assert!(
            read_response(&mut client, Duration::from_secs(5))
                .await
                .is_some()
        );
        let seen = spans.0.lock().unwrap().clone();
        assert_eq!(seen.len(), expected, "{level}: {seen:?}");
        if expected == 1 {
            assert_eq!(seen[0], "/x");
        }
    }
}
