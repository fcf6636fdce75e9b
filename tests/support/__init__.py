"""What the tests (and the benchmarks in bench/) share, one module per concern.

- `files`: where the real node files are, and writing node files as people do;
- `expect`: the answers the service owes for a node file, derived from the file;
- `polling`: `wait_until`, the one way to wait;
- `server`: `droq-registry serve` as a real process (`ServerProcess`), its environment, and
  a commit made on it by writing a file;
- `sockets`: raw sockets to a server process (answers read as bytes, pipelined
  connections, event streams, probes);
- `http`: the app in a TestClient, and reading its answers (revision, sources, metrics);
- `db`: reading the service's SQLite database from outside;
- `events`: Server-Sent Events read from a streaming httpx response;
- `histories`: replicas and the positions (revision, epoch, content hash) their answers give.

Nothing here imports pytest: the benchmarks use `server`, `polling` and `http` as well.
The fixtures that use these live in tests/conftest.py.
"""
