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

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let (addr, _stop) = start(limits, Duration::ZERO).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(GET).await.unwrap();
    assert!(
        read_response(&mut first, Duration::from_secs(5))
            .await
            .is_some()
    );
    // The first is still open (keep-alive): the second is not served.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(GET).await.unwrap();
    assert_eq!(
        read_response(&mut second, Duration::from_millis(500)).await,
        None
    );
    drop(first);
    assert!(
        read_response(&mut second, Duration::from_secs(5))
            .await
            .is_some(),
        "served once the first connection closed"
    );
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
