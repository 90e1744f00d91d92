#!/usr/bin/env bash
# Starts and stops a local control plane (etcd + kube-apiserver) on free loopback ports, with
# RBAC authorization and static token users, for `make dev-cluster`, `make run` and the tests.
#
#   cluster.sh start DIR   start in the background and return; harmless when already running
#   cluster.sh stop DIR    stop exactly the processes `start` recorded in DIR
#   cluster.sh restart-apiserver DIR
#                          stop kube-apiserver and start it again, same port and data
#   cluster.sh run DIR     start, print "ready", and stop when stdin closes or on a signal;
#                          the processes die with this script, whatever kills it
#
# DIR receives kubeconfig-<user> for admin (system:masters), alice (devs), bob and carol
# (approvers), mallory (no groups), jit-operator (the operator's own identity, no groups) and
# approver-1 to approver-5 (approvers, for concurrency tests),
# plus bin (a link to the binaries), logs/, pki/ and the etcd data.
#
# kube-apiserver sends its audit events (batch mode, 1 s batches) to the operator's audit
# webhook at https://127.0.0.1:$(cat DIR/activity-port)/audit, with the token in
# DIR/pki/activity-token; the operator serves it with DIR/pki/activity/tls.{crt,key}:
#   jit-operator --activity-addr 127.0.0.1:PORT --activity-cert-dir DIR/pki/activity \
#                --activity-token-file DIR/pki/activity-token
#
# JIT_APISERVER_PROFILING=true serves kube-apiserver's /debug/pprof (to admin), to see where
# its CPU goes under `make bench` (docs/performance.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly here
readonly ready_timeout_seconds="${JIT_CLUSTER_READY_TIMEOUT:-90}"
# user:groups, groups comma-separated
readonly users=("admin:system:masters" "alice:devs" "bob:approvers" "carol:approvers" "mallory:"
	"jit-operator:" "approver-1:approvers" "approver-2:approvers" "approver-3:approvers"
	"approver-4:approvers" "approver-5:approvers")

usage() {
	echo "usage: $0 start|stop|run|restart-apiserver DIR" >&2
	exit 2
}

log() { echo "cluster: $*" >&2; }

# Whether PID is alive and one of the processes started for this DIR.
is_ours() {
	local pid="$1"
	[[ -n "$pid" && -r "/proc/$pid/cmdline" ]] &&
		tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$dir/"
}

recorded_pid() { cat "$dir/pids/$1" 2>/dev/null || true; }

running() {
	is_ours "$(recorded_pid etcd)" && is_ours "$(recorded_pid kube-apiserver)" && is_ready
}

is_ready() {
	[[ -f "$dir/endpoint" ]] || return 1
	curl --silent --fail --max-time 2 --cacert "$dir/pki/ca.crt" \
		-H "Authorization: Bearer $(token_of admin)" "$(cat "$dir/endpoint")/readyz" >/dev/null 2>&1
}

token_of() { awk -F, -v user="$1" '$2 == user { print $1 }' "$dir/pki/tokens.csv"; }

# Picks N free ports below the kernel's ephemeral range. A port inside it can be taken by any
# outgoing connection (or a client connecting to itself) while kube-apiserver is down for a
# restart, and the restarted server would then fail with "address already in use".
free_ports() {
	python3 - "$1" <<-'EOF'
		import random, socket, sys
		with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
		    ephemeral_low = int(f.read().split()[0])
		candidates = list(range(10000, max(ephemeral_low, 10001)))
		random.shuffle(candidates)
		sockets = []
		for port in candidates:
		    if len(sockets) == int(sys.argv[1]):
		        break
		    s = socket.socket()
		    try:
		        s.bind(("127.0.0.1", port))
		    except OSError:
		        s.close()
		        continue
		    sockets.append(s)
		if len(sockets) < int(sys.argv[1]):
		    sys.exit("no free ports below the ephemeral range")
		print(" ".join(str(s.getsockname()[1]) for s in sockets))
	EOF
}

make_pki() {
	local pki="$dir/pki"
	rm -rf "$pki"
	mkdir -p "$pki"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
		-subj "/CN=jit-operator dev cluster CA" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
		-keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=kube-apiserver" \
		-keyout "$pki/serving.key" -out "$pki/serving.csr" 2>/dev/null
	openssl x509 -req -in "$pki/serving.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
		-CAcreateserial -days 3650 -out "$pki/serving.crt" -extfile <(printf '%s\n' \
			"subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
			"keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth") 2>/dev/null
	openssl genrsa -out "$pki/service-account.key" 2048 2>/dev/null
	openssl rsa -in "$pki/service-account.key" -pubout -out "$pki/service-account.pub" 2>/dev/null
	local entry user groups
	: >"$pki/tokens.csv"
	for entry in "${users[@]}"; do
		user="${entry%%:*}"
		groups="${entry#*:}"
		# token,user,uid[,"group1,group2"]: an empty group column would make a group named "".
		echo "$(openssl rand -hex 24),$user,uid-$user${groups:+,\"$groups\"}" >>"$pki/tokens.csv"
	done
	# The operator's audit webhook: its serving certificate, and the token the API server
	# presents to it.
	mkdir -p "$pki/activity"
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-subj "/CN=jit-operator audit webhook" \
		-keyout "$pki/activity/tls.key" -out "$pki/activity.csr" 2>/dev/null
	openssl x509 -req -in "$pki/activity.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
		-CAcreateserial -days 3650 -out "$pki/activity/tls.crt" -extfile <(printf '%s\n' \
			"subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
			"keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth") 2>/dev/null
	openssl rand -hex 32 >"$pki/activity-token"
	chmod 600 "$pki"/*.key "$pki/activity/tls.key" "$pki/tokens.csv" "$pki/activity-token"
}

# The audit policy and the webhook backend's kubeconfig: every call at the Metadata level,
# once (ResponseComplete), except the operator's own and the API server's, and health checks.
write_audit_config() {
	local activity="$1"
	cat >"$dir/audit-policy.yaml" <<-EOF
		apiVersion: audit.k8s.io/v1
		kind: Policy
		omitStages: [RequestReceived, ResponseStarted]
		omitManagedFields: true
		rules:
		- level: None
		  users: [jit-operator, system:apiserver]
		- level: None
		  nonResourceURLs: [/healthz*, /livez*, /readyz*]
		- level: Metadata
	EOF
	cat >"$dir/audit-webhook.kubeconfig" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: jit-operator
		  cluster:
		    server: https://127.0.0.1:$activity/audit
		    certificate-authority: $dir/pki/ca.crt
		users:
		- name: kube-apiserver
		  user:
		    token: $(cat "$dir/pki/activity-token")
		contexts:
		- name: audit
		  context: {cluster: jit-operator, user: kube-apiserver}
		current-context: audit
	EOF
	chmod 600 "$dir/audit-webhook.kubeconfig"
	echo "$activity" >"$dir/activity-port"
}

write_kubeconfigs() {
	local endpoint ca entry user
	endpoint="$(cat "$dir/endpoint")"
	ca="$(base64 -w0 <"$dir/pki/ca.crt")"
	for entry in "${users[@]}"; do
		user="${entry%%:*}"
		cat >"$dir/kubeconfig-$user" <<-EOF
			apiVersion: v1
			kind: Config
			clusters:
			- name: jit-dev
			  cluster:
			    server: $endpoint
			    certificate-authority-data: $ca
			users:
			- name: $user
			  user:
			    token: $(token_of "$user")
			contexts:
			- name: $user@jit-dev
			  context:
			    cluster: jit-dev
			    user: $user
			    namespace: default
			current-context: $user@jit-dev
		EOF
		chmod 600 "$dir/kubeconfig-$user"
	done
}

# Starts one process in its own session, records its pid, and keeps its output in logs/.
# With a parent-death signal the process dies with this script (run mode).
launch() {
	local name="$1"
	shift
	local prefix=(setsid)
	if [[ "$mode" == run ]]; then
		prefix+=(setpriv --pdeathsig KILL)
	fi
	"${prefix[@]}" "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$dir/pids/$name"
}

# Starts kube-apiserver on the ports recorded in DIR/ports.
launch_apiserver() {
	local etcd_client apiserver
	read -r etcd_client apiserver <"$dir/ports"
	launch kube-apiserver "$dir/bin/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$etcd_client" \
		--secure-port="$apiserver" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
		--cert-dir="$dir/pki/apiserver" \
		--tls-cert-file="$dir/pki/serving.crt" --tls-private-key-file="$dir/pki/serving.key" \
		--authorization-mode=RBAC --anonymous-auth=false \
		--token-auth-file="$dir/pki/tokens.csv" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$dir/pki/service-account.pub" \
		--service-account-signing-key-file="$dir/pki/service-account.key" \
		--service-cluster-ip-range=10.96.0.0/24 \
		--disable-admission-plugins=ServiceAccount \
		--audit-policy-file="$dir/audit-policy.yaml" \
		--audit-webhook-config-file="$dir/audit-webhook.kubeconfig" \
		--audit-webhook-mode=batch --audit-webhook-batch-max-wait=1s \
		--audit-webhook-initial-backoff=1s \
		--profiling="${JIT_APISERVER_PROFILING:-false}"

}

start() {
	if running; then
		log "already running at $(cat "$dir/endpoint") (kubeconfigs in $dir)"
		return 0
	fi
	stop_processes
	local bin
	bin="$("$here/build.sh")"
	ln -sfn "$bin" "$dir/bin"
	rm -rf "$dir/etcd" "$dir/logs" "$dir/pids"
	mkdir -p "$dir/etcd" "$dir/logs" "$dir/pids"
	chmod 700 "$dir/etcd"
	make_pki

	local etcd_client etcd_peer apiserver activity
	read -r etcd_client etcd_peer apiserver activity <<<"$(free_ports 4)"
	echo "https://127.0.0.1:$apiserver" >"$dir/endpoint"
	write_audit_config "$activity"

	launch etcd "$bin/etcd" \
		--name=jit-dev --data-dir="$dir/etcd" --unsafe-no-fsync --log-level=warn \
		--listen-client-urls="http://127.0.0.1:$etcd_client" \
		--advertise-client-urls="http://127.0.0.1:$etcd_client" \
		--listen-peer-urls="http://127.0.0.1:$etcd_peer" \
		--initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
		--initial-cluster="jit-dev=http://127.0.0.1:$etcd_peer"

	echo "$etcd_client $apiserver" >"$dir/ports"
	launch_apiserver

	wait_until_ready || return 1
	write_kubeconfigs
	log "ready at $(cat "$dir/endpoint") (kubeconfigs in $dir)"
}

# Waits for /readyz, failing with the logs when a process dies or time runs out.
wait_until_ready() {
	local waited=0 name
	until is_ready; do
		for name in etcd kube-apiserver; do
			if ! is_ours "$(recorded_pid "$name")"; then
				log "$name exited during start-up; last lines of $dir/logs/$name.log:"
				tail -n 30 "$dir/logs/$name.log" >&2 || true
				stop_processes
				return 1
			fi
		done
		if ((waited >= ready_timeout_seconds * 4)); then
			log "kube-apiserver not ready after ${ready_timeout_seconds}s; see $dir/logs/"
			tail -n 30 "$dir/logs/kube-apiserver.log" >&2 || true
			stop_processes
			return 1
		fi
		sleep 0.25
		waited=$((waited + 1))
	done
}

# Whether something listens on 127.0.0.1:PORT (from /proc/net/tcp: local address, state 0A).
listening() {
	local hex
	hex="$(printf '0100007F:%04X' "$1")"
	awk -v want="$hex" '$2 == want && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp
}

# Kills kube-apiserver (as a crash would; a graceful stop waits up to a minute for open
# watches) and starts it again on the same port, against the same etcd.
restart_apiserver() {
	local pid
	pid="$(recorded_pid kube-apiserver)"
	if is_ours "$pid"; then
		kill -KILL "$pid"
	fi
	# Not is_ours, nor the process turning zombie: an exiting process loses its cmdline before
	# it closes its sockets, and its main thread turns zombie while the other threads (which
	# share the listening socket) are still exiting. Only a free port says it is gone.
	local apiserver waited=0
	read -r _ apiserver <"$dir/ports"
	while listening "$apiserver"; do
		if ((waited >= 300)); then
			log "port $apiserver still taken 30s after kube-apiserver was killed"
			return 1
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	launch_apiserver
	wait_until_ready
	log "kube-apiserver restarted"
}

stop_processes() {
	local name pid waited
	for name in kube-apiserver etcd; do
		pid="$(recorded_pid "$name")"
		if is_ours "$pid"; then
			kill -TERM "$pid" 2>/dev/null || true
			waited=0
			while is_ours "$pid" && ((waited < 40)); do
				sleep 0.25
				waited=$((waited + 1))
			done
			if is_ours "$pid"; then
				kill -KILL "$pid" 2>/dev/null || true
			fi
		fi
		rm -f "$dir/pids/$name"
	done
}

[[ $# -eq 2 ]] || usage
mode="$1"
mkdir -p "$2"
dir="$(cd "$2" && pwd)"
readonly mode dir

case "$mode" in
start) start ;;
restart-apiserver) restart_apiserver ;;
stop)
	stop_processes
	log "stopped"
	;;
run)
	trap 'stop_processes; [[ -n "${JIT_KEEP_CLUSTER:-}" ]] || rm -rf "$dir"' EXIT
	trap 'exit 0' INT TERM HUP
	start
	echo "ready $(cat "$dir/endpoint")"
	# Holds until whoever started us closes our stdin, which happens when it exits.
	cat >/dev/null || true
	;;
*) usage ;;
esac
