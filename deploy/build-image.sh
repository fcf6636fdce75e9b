#!/usr/bin/env bash
# Build the registry's image with podman from the project's Dockerfile, on a machine that
# reaches no container registry.
#
#   deploy/build-image.sh [--tag NAME] [--base IMAGE] [--apt-sources FILE]
#
# The base: --base IMAGE if given, else python:3.11-slim if it is already in podman's
# storage, else a stand-in for it made here from Debian's own packages (bookworm, whose
# python3 is 3.11) with mmdebstrap and `podman import`, once; later builds reuse it.
# mmdebstrap takes this machine's apt sources (--apt-sources, default the first of
# /etc/apt/sources.list.d/debian.sources and /etc/apt/sources.list).
#
# pip inside the build uses this machine's package index the way this machine's pip does:
# its effective `pip config` (files and PIP_* variables) becomes a pip.conf that only the
# build's RUN steps see, and the files it names (CA bundle, local indexes, constraints) are
# mounted read-only beside it. Nothing of either stays in the image, and no index or mirror
# is named here.
#
# Needs: podman; mmdebstrap only when the stand-in base must be made. Prints the image id.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tag=droq-registry:latest
base=
apt_sources=
value() {  # the value of option $1, which must be given ($2 is what followed it)
  if [ -z "${2:-}" ] || [ "${2#-}" != "$2" ]; then
    echo "build-image.sh: $1 needs a value (see --help)" >&2
    exit 2
  fi
}
while [ $# -gt 0 ]; do
  case "$1" in
    --tag|--base|--apt-sources)
      value "$1" "${2:-}"
      case "$1" in --tag) tag=$2 ;; --base) base=$2 ;; --apt-sources) apt_sources=$2 ;; esac
      shift 2 ;;
    --tag=*) tag=${1#*=}; value --tag "$tag"; shift ;;
    --base=*) base=${1#*=}; value --base "$base"; shift ;;
    --apt-sources=*) apt_sources=${1#*=}; value --apt-sources "$apt_sources"; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# The stand-in's name says what it is: it is never mistaken for the real python image.
standin=localhost/droq-python-standin:3.11-slim-bookworm
python=${PYTHON:-python3}

if [ -z "$base" ]; then
  if podman image exists docker.io/library/python:3.11-slim; then
    base=docker.io/library/python:3.11-slim
  else
    base=$standin
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$base" = "$standin" ] && ! podman image exists "$standin"; then
  if [ -z "$apt_sources" ]; then
    for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
      if [ -s "$candidate" ]; then apt_sources=$candidate; break; fi
    done
  fi
  if [ -z "$apt_sources" ] || [ ! -f "$apt_sources" ]; then
    echo "build-image.sh: no apt sources file to make the base from; pass --apt-sources FILE" >&2
    exit 2
  fi
  command -v mmdebstrap >/dev/null || {
    echo "build-image.sh: mmdebstrap is needed to make the base image (apt-get install mmdebstrap)" >&2
    exit 2
  }
  echo "making $standin from Debian bookworm packages ($apt_sources)" >&2
  # What python:3.11-slim is: Debian minbase with Python 3.11, venv, CA certificates, netbase
  # and tzdata. Documentation, manual pages and translations are left out, as there.
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$work/base.tar" "$apt_sources"
  # Imported only once mmdebstrap has succeeded: a cut-off tarball never becomes the base.
  podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$work/base.tar" "$standin" >/dev/null
  rm -f "$work/base.tar"
fi

# This machine's effective pip settings for reaching an index, as a pip.conf for the build.
# Its RUN steps get this folder as root's home (/root is in every Debian base, so mounting
# over it leaves nothing in the image, where a new mount point would stay as an empty file):
# home/.config/pip/pip.conf, and home/host/N, where the Nth local file or folder the
# settings name (CA bundle, local index, constraints) is mounted read-only.
"$python" - "$work" <<'PY'
import ast, os, ssl, subprocess, sys
from urllib.parse import unquote, urlparse

work = sys.argv[1]
home = os.path.join(work, "home")
KEYS = {"index-url", "extra-index-url", "find-links", "no-index", "trusted-host", "cert",
        "client-cert", "proxy", "timeout", "default-timeout", "retries", "constraint"}
try:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, check=True).stdout
except (OSError, subprocess.CalledProcessError):
    listing = ""  # no pip here: pip's own defaults, as on this machine
found: dict[str, dict[str, str]] = {"global": {}, "install": {}, ":env:": {}}
for line in listing.splitlines():
    name, _, value = line.partition("=")
    section, _, key = name.partition(".")
    if section in found and key in KEYS:
        found[section][key] = ast.literal_eval(value)
settings = {**found["global"], **found["install"], **found[":env:"]}  # pip's precedence
# pip in the build trusts what this machine trusts, whatever bundle the base ships.
bundle = os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().openssl_cafile
if os.path.isfile(bundle):
    settings.setdefault("cert", bundle)

mounts: dict[str, str] = {}  # real path on this machine -> its path in the build

def inside(path: str) -> str:
    real = os.path.realpath(path)
    if real not in mounts:
        mounts[real] = f"/root/host/{len(mounts)}"
        point = os.path.join(home, "host", str(len(mounts) - 1))
        if os.path.isdir(real):
            os.makedirs(point)
        else:
            os.makedirs(os.path.dirname(point), exist_ok=True)
            open(point, "w").close()
    return mounts[real]

def translate(key: str, token: str) -> str:
    if token.startswith("file:"):
        path = unquote(urlparse(token).path).rstrip("/") or "/"
        # An index (PEP 503) or a links page refers to its files relative to itself, often
        # in a folder beside it (simple/ and files/): the folder holding both goes in.
        folder = path if key == "find-links" and os.path.isdir(path) else os.path.dirname(path)
        if folder == "/" or not os.path.exists(folder):
            return token
        return "file://" + inside(folder) + path[len(folder):]
    return inside(token) if os.path.isabs(token) and os.path.exists(token) else token

for key, value in settings.items():
    tokens = value.split() if key in ("find-links", "index-url", "extra-index-url", "trusted-host") else [value]
    settings[key] = " ".join(translate(key, token) for token in tokens)
os.makedirs(os.path.join(home, ".config", "pip"), exist_ok=True)
with open(os.path.join(home, ".config", "pip", "pip.conf"), "w") as conf:
    conf.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
with open(os.path.join(work, "mounts"), "w") as out:
    out.write("".join(f"{real}:{target}:ro\n" for real, target in mounts.items()))
PY

volumes=(-v "$work/home:/root:ro")
while IFS= read -r mount; do volumes+=(-v "$mount"); done <"$work/mounts"

# --format docker: the OCI image format has no HEALTHCHECK, and podman would drop it.
# The build's own output goes to stderr, so a failing step shows why; stdout is the id.
podman build --format docker --pull=never --layers --iidfile "$work/iid" \
  --build-arg PYTHON_IMAGE="$base" "${volumes[@]}" \
  --tag "$tag" --file Dockerfile . >&2
cat "$work/iid"; echo
