# Shared by the scripts that start chatd on a free loopback port. Source it; it defines:
#   free_port            prints a port that was free a moment ago
#   wait_port PORT [N]   polls 127.0.0.1:PORT until it accepts (at most N tries, 50 ms apart)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
  local port=$1 tries=${2:-200}
  for _ in $(seq "$tries"); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && return 0
    sleep 0.05
  done
}
