/*
 * floor: the least work any Redis-protocol server can do per request, as a
 * reference for scripts/bench-peers.sh (rows 2 and 4). Not a database.
 *
 * One thread, one epoll loop, like redis-server: read every connection that
 * is readable, then (with DURABLE=1) append the bytes read to a preallocated
 * file and fdatasync it once for the whole batch (Redis's appendfsync always,
 * replidb's group commit), then answer "+OK" once per read. Nothing is
 * parsed, stored or looked up. One answer per read is right only for a client
 * that sends one command at a time and waits for the answer, which is what
 * redis-benchmark does without -P; that is the only client this is for.
 *
 * Whatever rate the load generator reaches against this is the most any
 * server can reach on the same machine with the same generator: a target
 * above it is out of reach of the server's code.
 *
 * Usage: floor PORT DURABLE(0|1) FILE
 * Build: cc -O2 -o floor floor.c
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define EVENTS_MAX 1024
#define READ_BYTES_MAX 65536
#define FILE_BYTES (64L << 20)

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: floor PORT DURABLE(0|1) FILE\n");
    return 2;
  }
  int port = atoi(argv[1]), durable = atoi(argv[2]), one = 1;
  int file = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (file < 0) {
    perror("open");
    return 1;
  }
  /* Preallocate with zeros, as replidb's WAL does, so a sync writes data
   * only, not the file's growing size. */
  char *zeros = calloc(1, 1 << 20);
  for (long off = 0; off < FILE_BYTES; off += 1 << 20)
    if (pwrite(file, zeros, 1 << 20, off) != 1 << 20) {
      perror("pwrite");
      return 1;
    }
  fsync(file);
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 511)) {
    perror("bind");
    return 1;
  }
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
  epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
  static struct epoll_event events[EVENTS_MAX];
  static int answer[EVENTS_MAX];
  static char buf[READ_BYTES_MAX];
  long at = 0;
  for (;;) {
    int n = epoll_wait(ep, events, EVENTS_MAX, -1), answers = 0;
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (fd == listener) {
        int c = accept(listener, NULL, NULL);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
        continue;
      }
      ssize_t r = read(fd, buf, sizeof buf);
      if (r <= 0) {
        close(fd);
        continue;
      }
      if (durable) {
        if (at + r > FILE_BYTES) at = 0;
        if (pwrite(file, buf, r, at) != r) perror("pwrite");
        at += r;
      }
      answer[answers++] = fd;
    }
    if (durable && answers && fdatasync(file)) perror("fdatasync");
    for (int i = 0; i < answers; i++)
      if (write(answer[i], "+OK\r\n", 5) != 5) close(answer[i]);
  }
}
