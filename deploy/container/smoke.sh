#!/usr/bin/env bash
# deploy/container/smoke.sh IMAGE — runs the CPU image and serves one completion:
# without PEFTD_ADMIN_KEY the container refuses to start (naming the variable); with it it
# answers /health as UID 10001, completes a prompt, and the image's HEALTHCHECK command
# passes.
# RUNNER=podman (default: podman run -p) or buildah (buildah run --isolation chroot, host
# network). build.sh picks buildah where crun cannot start containers (a machine that is
# itself a VM/container with hybrid cgroups: "cgroups in hybrid mode not supported").
set -euo pipefail
img=$1; port=${PORT:-18080}; name=peftd-smoke-$$; RUNNER=${RUNNER:-podman}
key=smoke-key-$$
log=$(mktemp); bpid=""
cleanup() {
    if [ "$RUNNER" = podman ]; then podman rm -f "$name" >/dev/null 2>&1 || true
    else
        [ -n "$bpid" ] && kill -TERM "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null || true
        buildah rm "$name" >/dev/null 2>&1 || true
    fi
    rm -f "$log"
}
trap cleanup EXIT
if [ "$RUNNER" = podman ]; then
    run_nokey() { podman run ${PODMAN_RUN_OPTS:-} --rm "$img"; }
    start() { podman run ${PODMAN_RUN_OPTS:-} -d --name "$name" -e PEFTD_ADMIN_KEY="$key" -p 127.0.0.1:$port:8080 "$img" >/dev/null; }
    in_ctr() { podman exec "$name" "$@"; }
    healthcheck() { podman healthcheck run "$name"; }
else
    buildah from --name "$name" "$img" >/dev/null
    # the image's ENTRYPOINT, with the port moved off 8080 (the host's network is shared)
    ep=(/usr/bin/peftd serve --config /etc/peftd/peftd.production.json --host 0.0.0.0 --port "$port")
    run_nokey() { buildah run --isolation chroot --user 10001:10001 "$name" -- "${ep[@]}"; }
    start() { buildah run --isolation chroot --user 10001:10001 --env PEFTD_ADMIN_KEY="$key" "$name" -- "${ep[@]}" >"$log" 2>&1 & bpid=$!; }
    in_ctr() { buildah run --isolation chroot --user 10001:10001 "$name" -- "$@"; }
    # the HEALTHCHECK's command, as the image records it (docker format)
    healthcheck() {
        local hc; hc=$(podman image inspect --format '{{join .Config.Healthcheck.Test " "}}' "$img")
        [[ "$hc" == *"/health"* ]] || { echo "no HEALTHCHECK in the image: $hc"; return 1; }
        in_ctr sh -c "curl -fsS http://127.0.0.1:$port/health"
    }
fi
if run_nokey >"$log" 2>&1 || ! grep -q "PEFTD_ADMIN_KEY, which is not set" "$log"; then
    echo "FAIL: without PEFTD_ADMIN_KEY the container must refuse to start with that message:"
    cat "$log"; exit 1
fi
echo "ok: refuses to start without a key ($(grep -o 'auth.admin_key_env.*' "$log" | head -1))"
start
for _ in $(seq 1 240); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/health" >/dev/null || { echo "no /health:"; tail -20 "$log"; exit 1; }
uid=$(in_ctr id -u)
echo "ok: /health answers; container user $uid"
[ "$uid" = 10001 ]
st=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/completions" -d '{"prompt":"x"}' -H 'Content-Type: application/json')
echo "ok: no key -> HTTP $st"; [ "$st" = 401 ]
out=$(curl -fsS "http://127.0.0.1:$port/v1/completions" -H "Authorization: Bearer $key" \
      -H 'Content-Type: application/json' \
      -d '{"model":"stories260K","prompt":"Once upon a time","max_tokens":16,"temperature":0}')
echo "ok: completion: $out"
printf '%s' "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["choices"][0]["text"], d'
healthcheck >/dev/null && echo "ok: HEALTHCHECK command passes"
