#!/usr/bin/env bash
# Build the CPU image with podman and run the line from its filesystem: config check, start, /readyz,
# verdicts recorded, SIGTERM stop within 5 s. Run as root from the repo root (make test-image).
#
# No container is run: where containers are refused (a sandbox without setrlimit, as in CI here) the built
# image's root filesystem is mounted (podman create + podman mount) and the line runs in it under chroot,
# with /proc, /dev/shm, /dev/null, /dev/urandom and a data dir bound in, the image's own environment and user.
# No registry is needed: the base is a Debian bookworm bootstrapped by mmdebstrap (python3 3.11 + venv).
#
# Then fails when the image is MAX_MB (600) MB or more uncompressed.
#
# Environment: IMAGE (tag to build, default localhost/linewatch:test), CACHE (where the base's tarball is kept,
# default var/image), KEEP=1 keeps the image afterwards, LAYERS=true keeps podman's per-step layer cache
# (off by default: committing every step's layer made the build several times slower here).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/linewatch:test}
CACHE=${CACHE:-var/image}
MAX_STOP_S=5
MAX_MB=600
# The base: Debian bookworm's essential packages with Python 3.11 and venv, the C++ runtime the wheels link, time
# zones and CA certificates; no apt (the image installs nothing at run time); merged /usr set up by mmdebstrap's
# hook, so no usrmerge and none of the perl it pulls in; no documentation, man pages or translations.
# The tag carries a hash of these options: changing them bootstraps a new base.
base_opts=(--variant=essential --include=python3,python3-venv,libstdc++6,tzdata,ca-certificates
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*')
base_tag=bookworm-$(printf '%s\n' "${base_opts[@]}" | sha256sum | cut -c1-12)
BASE=localhost/linewatch-base:$base_tag
say() { printf '== %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (podman mount, chroot and bind mounts need it)"
for tool in podman mmdebstrap chroot mount python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install podman mmdebstrap)"
done

t0=$(date +%s)
if ! podman image exists "$BASE"; then
  mkdir -p "$CACHE"
  tarball="$CACHE/base-$base_tag.tar"
  if [ ! -s "$tarball" ]; then
    say "bootstrapping the Debian bookworm base with mmdebstrap"
    mmdebstrap --quiet "${base_opts[@]}" bookworm "${tarball%.tar}.part.tar"  # its format from the name's end
    mv "${tarball%.tar}.part.tar" "$tarball"
  fi
  podman import --quiet "$tarball" "$BASE" >/dev/null
fi

say "building $IMAGE (podman build --isolation chroot)"
# The build reaches the package index as pip does here: the same index and CA bundle (a TLS-inspecting proxy)
pip_cert=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
pip_index=${PIP_INDEX_URL:-$(pip config get global.index-url 2>/dev/null || true)}
build_args=(--build-arg BASE_IMAGE="$BASE")
[ -n "$pip_cert" ] && build_args+=(--secret "id=pip_cert,src=$pip_cert")
[ -n "$pip_index" ] && build_args+=(--build-arg "PIP_INDEX_URL=$pip_index")
podman build --quiet --isolation chroot --format docker --layers="${LAYERS:-false}" "${build_args[@]}" -f deploy/Dockerfile -t "$IMAGE" . >/dev/null
t_built=$(date +%s)
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image built in $((t_built - t0)) s: $((size / 1000000)) MB uncompressed"

ctr=$(podman create "$IMAGE")
root=$(podman mount "$ctr")
work=$(mktemp -d)
data="$work/data"
mounts=()
pid=""
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
  podman umount "$ctr" >/dev/null 2>&1 || true
  podman rm -f "$ctr" >/dev/null 2>&1 || true
  [ "${KEEP:-0}" = 1 ] || podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
bind() {  # bind SOURCE onto TARGET inside the image's root
  local target="$root$2"
  if [ -d "$1" ]; then mkdir -p "$target"; else mkdir -p "$(dirname "$target")"; touch "$target"; fi
  mount --bind "$1" "$target"
  mounts+=("$target")
}
mkdir -p "$data"
chown 10001:10001 "$data"
mkdir -p "$root/proc"
mount -t proc proc "$root/proc"
mounts+=("$root/proc")
bind /dev/shm /dev/shm
bind /dev/null /dev/null
bind /dev/urandom /dev/urandom
bind "$data" /var/lib/linewatch

# The image's environment and user, as a container runtime would set them
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
in_image() { chroot --userspec="$user" "$root" /usr/bin/env -i "${image_env[@]}" HOME=/var/lib/linewatch "$@"; }

say "linewatch config check (the baked-in config)"
in_image linewatch config check /etc/linewatch/linewatch.yaml

# The baked-in config with free ports (this host may run other lines) and a short runtime dir
read -r api_port plc_port < <(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
in_image python -c "import yaml
cfg = yaml.safe_load(open('/etc/linewatch/linewatch.yaml'))
cfg['api'] = {**cfg.get('api', {}), 'host': '127.0.0.1', 'port': $api_port}
cfg['plc'] = {**cfg.get('plc', {}), 'port': $plc_port}
cfg['runtime_dir'] = '/var/lib/linewatch/run'
open('/var/lib/linewatch/line.yaml', 'w').write(yaml.safe_dump(cfg))"
in_image linewatch config check /var/lib/linewatch/line.yaml

say "starting the line from the image (chroot, uid $user)"
( cd / && exec chroot --userspec="$user" "$root" /usr/bin/env -i "${image_env[@]}" HOME=/var/lib/linewatch \
    linewatch run --config /var/lib/linewatch/line.yaml ) >"$work/line.log" 2>&1 &
pid=$!
url="http://127.0.0.1:$api_port"
python3 - "$url" "$pid" "$work/line.log" <<'EOF' || { tail -n 40 "$work/line.log" >&2; die "the line did not become ready or record verdicts"; }
import json, os, sys, time, urllib.error, urllib.request
url, pid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def get(path):
    try:
        with urllib.request.urlopen(url + path, timeout=3) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None, None
def wait(what, predicate, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"the line exited while waiting for {what}")
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    sys.exit(f"timed out after {timeout} s waiting for {what}")
t = time.monotonic()
wait("/readyz", lambda: get("/readyz") == (200, {"status": "ready", "down": []}), 180)
print(f"== /readyz 200 after {time.monotonic() - t:.1f} s", file=sys.stderr)
status = wait("verdicts", lambda: (s := get("/api/status")[1]) and s["counts"]["total"] >= 20 and s, 60)
print(f"== {status['counts']['total']} verdicts recorded ({status['counts']}), model {status['model']['name']} "
      f"on {status['model']['providers']}", file=sys.stderr)
assert get("/livez") == (200, {"status": "alive", "hung": []})
EOF
# and in the store on the data dir, written by the line's record process as uid 10001
rows=$(python3 -c "import sqlite3, sys; print(sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)
.execute('SELECT count(*) FROM inspections').fetchone()[0])" "$data/linewatch.db")
[ "$rows" -ge 20 ] || die "only $rows rows in the store"
[ "$(stat -c %u "$data/linewatch.db")" = 10001 ] || die "the store is not owned by the image's user"

say "SIGTERM"
children=$(pgrep -d ' ' -P "$pid" || true)  # chroot and env exec: $pid is the supervisor itself
[ -n "$children" ] || die "the supervisor has no children"
t_term=$(date +%s.%N)
kill -TERM "$pid"
for _ in $(seq 1 $((MAX_STOP_S * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && die "the line did not stop within $MAX_STOP_S s of SIGTERM"
wait "$pid" || die "the line exited with status $? on SIGTERM"
took=$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$t_term")
pid=""
for c in $children; do kill -0 "$c" 2>/dev/null && die "child $c still runs after the line stopped"; done
grep -q "line stopped" "$work/line.log" || die "no 'line stopped' in the log"
say "stopped in $took s; store: $rows rows"

# What the image does besides the line, on the store it wrote: the QA report (fpdf2, matplotlib), the drift page,
# a model validated on a labelled holdout (its bias audit); the data check says it needs the data extra.
say "QA report (PDF), drift report, models validate on a holdout, from the image"
in_image linewatch report --from 2000-01-01T00:00 --to 2100-01-01T00:00 --format pdf --out /var/lib/linewatch/qa.pdf \
  --config /var/lib/linewatch/line.yaml >/dev/null
[ "$(head -c 5 "$data/qa.pdf")" = "%PDF-" ] || die "the QA report is not a PDF"
in_image linewatch drift report --out /var/lib/linewatch/drift.html --config /var/lib/linewatch/line.yaml >/dev/null
grep -q "data:image/png;base64," "$data/drift.html" || die "the drift report has no plot"
in_image linewatch emulate --count 40 --out /var/lib/linewatch/holdout >/dev/null
out=$(in_image linewatch models validate /opt/linewatch/models/active/default.onnx --holdout /var/lib/linewatch/holdout)
grep -q "escape_rate" <<<"$out" || die "models validate printed no holdout metrics"
if out=$(in_image linewatch data check /var/lib/linewatch/holdout 2>&1); then die "data check ran without its extra"; fi
grep -qF "pip install 'linewatch[data]'" <<<"$out" || die "data check does not name the extra it needs: $out"
printf 'image %s: %s MB uncompressed; built in %s s; whole test %s s\n' "$IMAGE" "$((size / 1000000))" \
  "$((t_built - t0))" "$(($(date +%s) - t0))"
[ "$size" -lt $((MAX_MB * 1000000)) ] || die "the image is $((size / 1000000)) MB uncompressed, over $MAX_MB MB"
