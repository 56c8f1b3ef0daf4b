/* evalkit-forward: relay TCP connections on the container's 127.0.0.1:PORT to a Unix socket.
 *
 * The trial's model route is a Unix socket the host serves, its directory bind-mounted read-only into a
 * `--network none` container. Agents that only speak TCP (Claude Code, OpenCode) reach it through this
 * relay. One process per connection (fork): a connection that misbehaves cannot stall another, and bytes
 * are relayed as they arrive, so streamed responses pass chunk by chunk. Connections in flight are
 * bounded (-n), because each one is a process and counts toward the container's pids limit.
 *
 * usage: evalkit-forward [-d] [-n MAX] PORT [SOCKET]
 *   -d      go to the background once listening (the parent exits 0 then), so `evalkit-forward -d P && agent`
 *           starts the agent only after the port accepts connections
 *   -n MAX  connections relayed at once (default 64); more wait in the listen backlog
 *   SOCKET  default /run/evalkit/model/model.sock
 * Static (musl), no libc needed in the container.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/evalkit/model/model.sock"

static void usage(void) {
    fputs("usage: evalkit-forward [-d] [-n MAX] PORT [SOCKET]\n", stderr);
    exit(2);
}

static void on_child(int sig) { (void)sig; } /* only interrupts accept() so finished children are reaped */

static int write_all(int fd, const char *buf, ssize_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += n;
        len -= n;
    }
    return 0;
}

/* Copy both ways until both sides have closed; a half-close is passed on as shutdown(SHUT_WR). */
static void relay(int client, int upstream) {
    char buf[65536];
    struct pollfd fds[2] = {{client, POLLIN, 0}, {upstream, POLLIN, 0}};
    int open_ends = 2;
    while (open_ends > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            int other = i == 0 ? upstream : client;
            ssize_t n = recv(fds[i].fd, buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                if (n < 0) return; /* reset: drop the whole connection */
                shutdown(other, SHUT_WR);
                fds[i].fd = -1;
                open_ends--;
            } else if (write_all(other, buf, n) < 0) {
                return;
            }
        }
    }
}

static void serve(int client, const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    int upstream = socket(AF_UNIX, SOCK_STREAM, 0);
    if (upstream < 0 || connect(upstream, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "evalkit-forward: cannot reach %s: %s\n", path, strerror(errno));
        return; /* the client sees its connection closed */
    }
    relay(client, upstream);
}

int main(int argc, char **argv) {
    int background = 0, max_children = 64, opt;
    while ((opt = getopt(argc, argv, "dn:")) != -1) {
        if (opt == 'd') background = 1;
        else if (opt == 'n' && (max_children = atoi(optarg)) > 0) continue;
        else usage();
    }
    if (optind >= argc || optind + 2 < argc) usage();
    char *end;
    long port = strtol(argv[optind], &end, 10);
    if (*end || port < 1 || port > 65535) usage();
    const char *path = optind + 1 < argc ? argv[optind + 1] : DEFAULT_SOCKET;
    if (strlen(path) >= sizeof ((struct sockaddr_un *)0)->sun_path) {
        fprintf(stderr, "evalkit-forward: socket path too long: %s\n", path);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN); /* a client hanging up must not kill the relay */
    struct sigaction sa = {.sa_handler = on_child}; /* no SA_RESTART: accept() returns EINTR */
    sigaction(SIGCHLD, &sa, NULL);

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&local, sizeof local) < 0 || listen(listener, 128) < 0) {
        fprintf(stderr, "evalkit-forward: cannot listen on 127.0.0.1:%ld: %s\n", port, strerror(errno));
        return 1;
    }
    if (background) {
        pid_t pid = fork();
        if (pid < 0) return 1;
        if (pid > 0) return 0; /* stays in the agent's process group: killing the agent stops it too */
    }

    int children = 0;
    for (;;) {
        while (waitpid(-1, NULL, children >= max_children ? 0 : WNOHANG) > 0) children--;
        int client = accept(listener, NULL, NULL);
        if (client < 0) continue; /* EINTR (a child finished) or a transient error */
        pid_t pid = fork();
        if (pid == 0) {
            close(listener);
            serve(client, path);
            _exit(0);
        }
        if (pid > 0) children++;
        else fprintf(stderr, "evalkit-forward: fork: %s\n", strerror(errno));
        close(client);
    }
}
