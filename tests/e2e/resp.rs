//! Real Redis clients against real `meshd` processes: the `redis` crate here, and Debian's
//! `redis-cli` and `redis-benchmark` when installed (`.ci/run` installs them and sets
//! `MESH_REQUIRE_REDIS_TOOLS=1`, so CI never skips them).

use super::*;
use redis::{Commands, ConnectionLike, RedisResult, Value};

/// A connection to DC `i`'s RESP address, authenticated with the token.
fn connect(mesh: &Mesh, i: usize) -> redis::Connection {
    let url = format!("redis://:{TOKEN}@{}/", mesh.resps[i]);
    let client = redis::Client::open(url).unwrap();
    client.get_connection_with_timeout(Duration::from_secs(10)).unwrap()
}

/// Waits until every DC takes writes (each refuses them while it waits for its peers).
fn ready(mesh: &Mesh) {
    for api in &mesh.apis {
        let api = *api;
        wait_for(Duration::from_secs(30), || http(api, "GET", "/readyz", b"").0 == 200);
    }
}

/// The error code (first word) and message of a command's error reply.
fn error_of<T: std::fmt::Debug>(result: RedisResult<T>) -> String {
    let e = result.expect_err("an error reply");
    format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or(""))
}

#[test]
fn redis_clients_write_at_one_dc_and_read_at_another_and_counters_and_sets_converge() {
    let mesh = Mesh::start(3);
    ready(&mesh);
    let (mut east, mut west, mut central) = (connect(&mesh, 0), connect(&mesh, 1), connect(&mesh, 2));

    let _: () = east.set("users:alice", "v1").unwrap();
    wait_for(Duration::from_secs(10), || {
        west.get::<_, Option<String>>("users:alice").unwrap().as_deref() == Some("v1")
    });
    let _: () = redis::cmd("MSET").arg("users:a").arg("1").arg("users:b").arg("2").query(&mut east).unwrap();
    let got: Vec<Option<String>> = east.mget(&["users:a", "users:b", "users:none"]).unwrap();
    assert_eq!(got, vec![Some("1".into()), Some("2".into()), None]);
    assert_eq!(east.exists::<_, i64>(&["users:a", "users:b", "users:none", "views:never"]).unwrap(), 2);
    assert_eq!(
        east.get::<_, Option<i64>>("views:never").unwrap(),
        None,
        "a counter never added to is absent"
    );
    assert_eq!(
        east.del::<_, i64>(&["users:a", "users:none"]).unwrap(),
        1,
        "DEL counts keys that had a value"
    );

    // Increments at two DCs converge to their sum everywhere; each INCRBY answers the value at
    // the DC that took it.
    assert_eq!(east.incr::<_, _, i64>("views:home", 5).unwrap(), 5);
    assert_eq!(east.incr::<_, _, i64>("views:home", 1).unwrap(), 6);
    let _: i64 = west.incr("views:home", 10).unwrap();
    let _: i64 = redis::cmd("DECRBY").arg("views:home").arg(2).query(&mut central).unwrap();
    for conn in [&mut east, &mut west, &mut central] {
        wait_for(Duration::from_secs(10), || conn.get::<_, Option<i64>>("views:home").unwrap() == Some(14));
    }

    // SADD/SREM answer how many members changed; the sets converge.
    assert_eq!(east.sadd::<_, _, i64>("tags:t", &["a", "b", "c"]).unwrap(), 3);
    assert_eq!(east.sadd::<_, _, i64>("tags:t", &["c", "d"]).unwrap(), 1);
    assert_eq!(east.srem::<_, _, i64>("tags:t", &["b", "x"]).unwrap(), 1);
    let _: i64 = west.sadd("tags:t", "w").unwrap();
    for conn in [&mut east, &mut west, &mut central] {
        wait_for(Duration::from_secs(10), || {
            let mut members: Vec<String> = conn.smembers("tags:t").unwrap();
            members.sort();
            members == ["a", "c", "d", "w"]
        });
        assert_eq!(conn.scard::<_, i64>("tags:t").unwrap(), 4);
        assert!(conn.sismember::<_, _, bool>("tags:t", "a").unwrap());
        assert!(!conn.sismember::<_, _, bool>("tags:t", "b").unwrap());
    }

    // Siblings: GET refuses to pick one of several values and names MESH.GET; MESH.PUT with
    // its context resolves them.
    let _: () = east.set("carts:c1", "x").unwrap();
    let _: () = west.set("carts:c1", "y").unwrap();
    wait_for(Duration::from_secs(10), || {
        let values: Value = redis::cmd("MESH.GET").arg("carts:c1").query(&mut east).unwrap();
        matches!(&values, Value::Array(parts) if matches!(&parts[1], Value::Array(v) if v.len() == 2))
    });
    let message = error_of(east.get::<_, Option<String>>("carts:c1"));
    assert!(message.starts_with("SIBLINGS") && message.contains("MESH.GET"), "{message}");
    let (context, _values): (String, Vec<String>) =
        redis::cmd("MESH.GET").arg("carts:c1").query(&mut east).unwrap();
    let _: () = redis::cmd("MESH.PUT").arg("carts:c1").arg("xy").arg(&context).query(&mut east).unwrap();
    for conn in [&mut east, &mut west, &mut central] {
        wait_for(Duration::from_secs(10), || {
            conn.get::<_, Option<String>>("carts:c1").ok().flatten().as_deref() == Some("xy")
        });
    }
    // users:alice, users:b, views:home, tags:t, carts:c1, and the tombstones DEL left at
    // users:a and users:none until they are collected.
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut east).unwrap();
    assert!((5..=7).contains(&dbsize), "DBSIZE {dbsize}");
}

#[test]
fn wait_counts_the_dcs_that_hold_the_connections_writes_and_times_out_with_fewer() {
    let mut mesh = Mesh::start(3);
    ready(&mesh);
    let mut east = connect(&mesh, 0);
    let _: () = east.set("users:w1", "1").unwrap();
    let acked: i64 = redis::cmd("WAIT").arg(2).arg(5_000).query(&mut east).unwrap();
    assert_eq!(acked, 2);

    mesh.kill(2);
    let _: () = east.set("users:w2", "2").unwrap();
    let start = Instant::now();
    let acked: i64 = redis::cmd("WAIT").arg(2).arg(500).query(&mut east).unwrap();
    assert_eq!(acked, 1, "only the DC still up holds the write");
    assert!(start.elapsed() >= Duration::from_millis(450), "WAIT returned before its timeout");
}

#[test]
fn a_deep_pipeline_is_answered_in_order_with_one_reply_per_command() {
    let mesh = Mesh::start(2);
    ready(&mesh);
    let mut east = connect(&mesh, 0);
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        match i % 4 {
            0 => pipe.cmd("SET").arg(format!("users:p{i}")).arg(i),
            1 => pipe.cmd("GET").arg(format!("users:p{}", i - 1)),
            2 => pipe.cmd("INCR").arg("views:pipeline"),
            _ => pipe.cmd("PING"),
        };
    }
    let replies: Vec<Value> = pipe.query(&mut east).unwrap();
    assert_eq!(replies.len(), 10_000);
    let mut increments = 0;
    for (i, reply) in replies.iter().enumerate() {
        match (i % 4, reply) {
            (0, Value::Okay) => {}
            // Each GET sees the SET just before it in the same pipeline.
            (1, Value::BulkString(v)) => assert_eq!(v, (i - 1).to_string().as_bytes()),
            (2, Value::Int(n)) => {
                increments += 1;
                assert_eq!(*n, increments, "INCR answers follow the pipeline's order");
            }
            (3, Value::SimpleString(s)) => assert_eq!(s, "PONG"),
            other => panic!("reply {i}: {other:?}"),
        }
    }
}

#[test]
fn auth_type_and_keyspace_errors_garbage_and_huge_bulk_lengths_are_refused_and_others_still_served() {
    let mesh = Mesh::start(1);
    ready(&mesh);
    // No token: everything but HELLO/AUTH/PING/QUIT is refused.
    let anonymous = redis::Client::open(format!("redis://{}/", mesh.resps[0])).unwrap();
    let mut anon = anonymous.get_connection().unwrap();
    assert!(error_of(anon.get::<_, Option<String>>("users:x")).starts_with("NOAUTH"));
    let pong: String = redis::cmd("PING").query(&mut anon).unwrap();
    assert_eq!(pong, "PONG");
    assert!(error_of(redis::cmd("AUTH").arg("wrong").query::<()>(&mut anon)).starts_with("WRONGPASS"));
    let _: () = redis::cmd("AUTH").arg(TOKEN).query(&mut anon).unwrap();
    let _: Option<String> = anon.get("users:x").unwrap();

    let mut conn = connect(&mesh, 0);
    let e = error_of(conn.sadd::<_, _, i64>("users:x", "m"));
    assert!(e.starts_with("WRONGTYPE") && e.contains("users"), "{e}");
    let e = error_of(conn.get::<_, Option<String>>("tags:x"));
    assert!(e.starts_with("WRONGTYPE"), "{e}");
    let e = error_of(conn.incr::<_, _, i64>("users:x", 1));
    assert!(e.starts_with("WRONGTYPE"), "{e}");
    let e = error_of(conn.get::<_, Option<String>>("nowhere:x"));
    assert!(e.contains("unknown keyspace 'nowhere'"), "{e}");
    let e = error_of(redis::cmd("SET").arg("users:x").arg("v").arg("EX").arg(10).query::<()>(&mut conn));
    assert!(e.contains("not supported"), "{e}");
    let e = error_of(redis::cmd("FLUSHALL").query::<()>(&mut conn));
    assert!(e.contains("unknown command"), "{e}");

    // Garbage: an error reply, then the connection is closed.
    let mut raw = TcpStream::connect(mesh.resps[0]).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"!!garbage\r\n").unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("-ERR Protocol error"), "{answer:?}");

    // A 600 MB bulk length: refused at its header (over the largest value); the client is cut
    // off, never buffered.
    let mut raw = TcpStream::connect(mesh.resps[0]).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = raw.try_clone().unwrap();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = answered.clone();
    let answer = std::thread::spawn(move || {
        let mut answer = String::new();
        let _ = reader.read_to_string(&mut answer);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        answer
    });
    raw.write_all(b"*3\r\n$3\r\nSET\r\n$7\r\nusers:y\r\n$600000000\r\n").unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    while sent < 600_000_000
        && !answered.load(std::sync::atomic::Ordering::SeqCst)
        && raw.write_all(&chunk).is_ok()
    {
        sent += chunk.len();
    }
    let answer = answer.join().unwrap();
    assert!(sent < 64 << 20, "the node kept reading a command of {sent} bytes");
    assert!(answer.starts_with("-ERR Protocol error: invalid bulk length"), "{answer:?}");

    // A nest of arrays (which the decoder would recurse into) is refused before decoding.
    let mut raw = TcpStream::connect(mesh.resps[0]).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&b"*1\r\n".repeat(100_000)).unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("-ERR Protocol error: a command is an array of bulk strings"), "{answer:?}");

    // Everyone else is still served.
    let _: () = conn.set("users:after", "ok").unwrap();
    assert_eq!(conn.get::<_, String>("users:after").unwrap(), "ok");
}

#[test]
fn resp3_hello_and_the_commands_clients_probe_work() {
    let mesh = Mesh::start(1);
    ready(&mesh);
    let mut conn = connect(&mesh, 0);
    let hello: Value =
        redis::cmd("HELLO").arg(3).arg("AUTH").arg("default").arg(TOKEN).query(&mut conn).unwrap();
    assert!(matches!(hello, Value::Map(_)), "HELLO 3 answers a RESP3 map: {hello:?}");
    let members: Value = {
        let _: i64 = conn.sadd("tags:r3", "m").unwrap();
        redis::cmd("SMEMBERS").arg("tags:r3").query(&mut conn).unwrap()
    };
    assert!(matches!(members, Value::Set(_)), "RESP3 sets: {members:?}");
    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut conn).unwrap();
    assert!(count >= 29);
    let _: Value = redis::cmd("COMMAND").arg("DOCS").query(&mut conn).unwrap();
    let save: Value = redis::cmd("CONFIG").arg("GET").arg("save").query(&mut conn).unwrap();
    assert!(matches!(save, Value::Map(ref m) if m.len() == 1), "{save:?}");
    let info: String = redis::cmd("INFO").query(&mut conn).unwrap();
    for section in ["# Server", "# Clients", "# Replication", "# Mesh"] {
        assert!(info.contains(section), "{info}");
    }
    let _: () = redis::cmd("SELECT").arg(0).query(&mut conn).unwrap();
    assert!(redis::cmd("SELECT").arg(1).query::<()>(&mut conn).is_err());
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("tester").query(&mut conn).unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut conn).unwrap();
    assert_eq!(name, "tester");
    assert!(conn.is_open());
}

#[test]
fn redis_cli_and_redis_benchmark_run_against_a_mesh() {
    let (Some(cli), Some(benchmark)) = (
        installed_tool(&["redis-cli"], "redis-tools", "MESH_REQUIRE_REDIS_TOOLS"),
        installed_tool(&["redis-benchmark"], "redis-tools", "MESH_REQUIRE_REDIS_TOOLS"),
    ) else {
        return;
    };
    let mesh = Mesh::start(3);
    ready(&mesh);
    let run = |tool: &std::path::Path, i: usize, args: &[&str]| -> String {
        let port = mesh.resps[i].port().to_string();
        // redis-cli warns about -a on stderr; redis-benchmark has no switch to silence it.
        let quiet: &[&str] = if tool == cli.as_path() { &["--no-auth-warning"] } else { &[] };
        let out = Command::new(tool)
            .args(["-h", "127.0.0.1", "-p", &port, "-a", TOKEN])
            .args(quiet)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(run(&cli, 0, &["SET", "users:cli", "hello"]), "OK");
    wait_for(Duration::from_secs(10), || run(&cli, 1, &["GET", "users:cli"]) == "hello");
    assert_eq!(run(&cli, 0, &["INCRBY", "views:cli", "5"]), "5");
    assert_eq!(run(&cli, 0, &["SET", "users:cli2", "x"]), "OK");
    assert_eq!(run(&cli, 0, &["GET", "tags:z"]).split_whitespace().next(), Some("WRONGTYPE"));
    let out = run(
        &benchmark,
        0,
        &["-t", "set,get,incr", "-P", "64", "-n", "20000", "-r", "1000", "-d", "100", "--csv"],
    );
    for test in ["SET", "GET", "INCR"] {
        assert!(out.contains(&format!("\"{test}\"")), "redis-benchmark did not report {test}: {out}");
    }
    // What redis-benchmark wrote replicated: a key it set is at another DC.
    wait_for(Duration::from_secs(10), || run(&cli, 2, &["DBSIZE"]).parse::<u64>().unwrap_or(0) > 100);
}
