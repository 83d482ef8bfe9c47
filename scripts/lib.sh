# Shared by the scripts that start chatd on a free loopback port. Source it; it defines:
#   free_port            prints a port that was free a moment ago
#   wait_port PORT [N] [PID]  polls 127.0.0.1:PORT until it accepts (at most N tries, 50 ms apart);
#                        fails if it never does, or as soon as process PID (if given) has exited

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
  local port=$1 tries=${2:-200} pid=${3:-}
  for _ in $(seq "$tries"); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "wait_port: process $pid exited before port $port accepted" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "wait_port: nothing accepted on port $port" >&2
  return 1
}
