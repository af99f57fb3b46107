/* The test suite's network guard: an LD_PRELOAD library that refuses, and records, every
 * attempt to reach an address beyond loopback (127.0.0.0/8, ::1).
 *
 * Built by tests/network_guard/__init__.py (build()) at the start of every test session
 * and preloaded into every dynamically linked program the tests start (LD_PRELOAD, set
 * by tests/conftest.py): Jupyter servers, kernels and launchers, Slurm's daemons,
 * Chromium, and their children. Statically linked programs (Go, for one) never load it:
 * they need a guard of their own. Direct system calls (syscall(2), io_uring) and the
 * libresolv res_* functions are not interposed; nothing the tests run uses them.
 *
 * Interposed: connect, sendto, sendmsg, sendmmsg (the destination must be loopback, where
 * 0.0.0.0 and :: count, as Linux connects them to this host; or AF_UNIX, AF_NETLINK, or
 * connect's AF_UNSPEC "disconnect"; another family, AF_PACKET, AF_VSOCK..., is not), and the
 * name lookups getaddrinfo, gethostbyname{,2}{,_r}, gethostbyaddr{,_r}, getnameinfo (the
 * name must need no traffic: numeric, a localhost name, or listed in /etc/hosts, which
 * glibc reads first). Anything else fails (ENETUNREACH, EAI_NONAME, HOST_NOT_FOUND) and
 * appends one line to the file named by JUPYTER_LOWCOST_NETWORK_LOG, or else GUARD_LOG
 * (given by the build): "pid \t ppid \t program \t call \t destination \t command line",
 * written by one write() to a file opened O_APPEND. No malloc, no stdio, no lock on the
 * way (but the first call's dlsym): it may run in any thread.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef GUARD_LOG
#define GUARD_LOG "/tmp/jupyter-lowcost-network.log"
#endif

/* The next definition of `name` (libc's), looked up on first use. */
#define REAL(name)                                                                       \
    static __typeof__(name) *real_##name;                                                \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

/* --- the record ------------------------------------------------------------------- */

struct line { char text[2048]; size_t n; };

static void put(struct line *l, const char *s, size_t n) {
    for (size_t i = 0; i < n && l->n < sizeof l->text - 1; i++) {
        char c = s[i];
        l->text[l->n++] = (c == '\t' || c == '\n' || c == '\0') ? ' ' : c;
    }
}
static void puts_(struct line *l, const char *s) { put(l, s, strlen(s)); }
static void tab(struct line *l) { if (l->n < sizeof l->text - 1) l->text[l->n++] = '\t'; }
static void putnum(struct line *l, unsigned long v) {
    char digits[24]; int i = sizeof digits;
    do { digits[--i] = '0' + v % 10; v /= 10; } while (v);
    put(l, digits + i, sizeof digits - i);
}
static void putfile(struct line *l, const char *path, size_t most) {
    char buf[1024]; ssize_t got = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) { got = read(fd, buf, most < sizeof buf ? most : sizeof buf); close(fd); }
    while (got > 0 && buf[got - 1] == '\0') got--;
    if (got > 0) put(l, buf, got); else puts_(l, "?");
}

/* Append one line: who (pid, parent, program, command line) tried `call` to `dest`. */
static void record(const char *call, const char *dest) {
    int saved = errno;
    struct line l = { .n = 0 };
    char exe[512];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe);
    putnum(&l, getpid()); tab(&l);
    putnum(&l, getppid()); tab(&l);
    if (len > 0) put(&l, exe, len); else putfile(&l, "/proc/self/comm", 64);
    tab(&l); puts_(&l, call); tab(&l); puts_(&l, dest); tab(&l);
    putfile(&l, "/proc/self/cmdline", 1000);
    l.text[l.n++] = '\n';
    const char *path = getenv("JUPYTER_LOWCOST_NETWORK_LOG");
    int fd = open(path && *path ? path : GUARD_LOG, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd >= 0) { ssize_t ignored = write(fd, l.text, l.n); (void)ignored; close(fd); }
    errno = saved;
}

/* --- addresses -------------------------------------------------------------------- */

static int v4_local(const struct in_addr *a) {
    unsigned long ip = ntohl(a->s_addr);
    return (ip >> 24) == 127 || ip == 0; /* Linux connects to 0.0.0.0 on this host */
}
static int v6_local(const struct in6_addr *a) {
    if (IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_UNSPECIFIED(a)) return 1; /* :: is ::1 */
    return IN6_IS_ADDR_V4MAPPED(a) && v4_local((const struct in_addr *)&a->s6_addr[12]);
}

/* "1.2.3.4:80", "[2001:db8::1]:80", "family 40" */
static void describe(const struct sockaddr *sa, int family, char *out, size_t size) {
    char host[INET6_ADDRSTRLEN] = "?";
    struct line l = { .n = 0 };
    if (family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)sa;
        inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof host);
        puts_(&l, "["); puts_(&l, host); puts_(&l, "]:"); putnum(&l, ntohs(s->sin6_port));
    } else if (family == AF_INET) {
        const struct sockaddr_in *s = (const void *)sa;
        inet_ntop(AF_INET, &s->sin_addr, host, sizeof host);
        puts_(&l, host); puts_(&l, ":"); putnum(&l, ntohs(s->sin_port));
    } else {
        puts_(&l, "family "); putnum(&l, family);
    }
    l.text[l.n] = '\0';
    strncpy(out, l.text, size - 1);
    out[size - 1] = '\0';
}

/* 1 when the destination stays on this host (or is no internet address); else record. */
static int allowed(const struct sockaddr *sa, socklen_t len, const char *call) {
    if (!sa || len < sizeof(sa_family_t)) return 1; /* a connected socket's peer */
    int family = sa->sa_family;
    /* sendto on an IPv4 socket takes AF_UNSPEC as AF_INET; connect takes it as "disconnect" */
    if (family == AF_UNSPEC && strcmp(call, "connect") != 0) family = AF_INET;
    if (family == AF_UNSPEC || family == AF_UNIX || family == AF_NETLINK) return 1;
    /* (a short address is refused by the kernel) */
    if (family == AF_INET && (len < sizeof(struct sockaddr_in)
        || v4_local(&((const struct sockaddr_in *)sa)->sin_addr))) return 1;
    if (family == AF_INET6 && (len < sizeof(struct sockaddr_in6)
        || v6_local(&((const struct sockaddr_in6 *)sa)->sin6_addr))) return 1;
    char dest[80];
    describe(sa, family, dest, sizeof dest);
    record(call, dest);
    return 0;
}

/* --- names ------------------------------------------------------------------------ */

static int ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && strcasecmp(s + n - m, tail) == 0;
}

static int numeric(const char *name) {
    char buf[INET6_ADDRSTRLEN + 64];
    struct in_addr a4; struct in6_addr a6;
    if (strspn(name, "0123456789abcdefABCDEFxX.") == strlen(name) && inet_aton(name, &a4))
        return 1;
    if (strlen(name) >= sizeof buf) return 0;
    strcpy(buf, name);
    buf[strcspn(buf, "%")] = '\0'; /* fe80::1%eth0 */
    return inet_pton(AF_INET6, buf, &a6) == 1;
}

static int localhost_name(const char *name) {
    static const char *const names[] = {
        "localhost", "localhost.", "localhost.localdomain", "localhost6",
        "localhost6.localdomain6", "ip6-localhost", "ip6-loopback", NULL,
    };
    for (int i = 0; names[i]; i++) if (strcasecmp(name, names[i]) == 0) return 1;
    return ends_with(name, ".localhost") || ends_with(name, ".localhost.");
}

/* /etc/hosts lines that list `name` (or, when addr is given, that address): which families
 * (1: IPv4, 2: IPv6) they give. Read whole, at most 16 KiB (more is not looked at). */
static int in_hosts(const char *name, int family, const void *addr) {
    char text[16384];
    int fd = open("/etc/hosts", O_RDONLY | O_CLOEXEC), found = 0;
    if (fd < 0) return 0;
    ssize_t got = read(fd, text, sizeof text - 1);
    close(fd);
    if (got <= 0) return 0;
    text[got] = '\0';
    char *save_line, *save_word;
    for (char *line = strtok_r(text, "\n", &save_line); line; line = strtok_r(NULL, "\n", &save_line)) {
        line[strcspn(line, "#")] = '\0';
        char *word = strtok_r(line, " \t\r", &save_word);
        unsigned char bin[16];
        int fam = !word ? 0 : inet_pton(AF_INET, word, bin) == 1 ? AF_INET
                : inet_pton(AF_INET6, word, bin) == 1 ? AF_INET6 : 0;
        if (!fam) continue;
        if (addr) {
            if (fam == family && memcmp(bin, addr, fam == AF_INET ? 4 : 16) == 0) return 1;
            continue;
        }
        while ((word = strtok_r(NULL, " \t\r", &save_word)))
            if (strcasecmp(word, name) == 0) found |= fam == AF_INET ? 1 : 2;
    }
    return found;
}

/* 1 when looking `name` up for `family` needs no traffic; else record `call`. */
static int name_allowed(const char *name, int family, const char *call) {
    if (!name || !*name || numeric(name) || localhost_name(name)) return 1;
    int families = in_hosts(name, family, NULL);
    if (family == AF_INET ? families & 1 : family == AF_INET6 ? families & 2 : families)
        return 1;
    char dest[300] = "name ";
    strncat(dest, name, sizeof dest - 6);
    record(call, dest);
    return 0;
}

/* 1 when the reverse lookup of an address needs no traffic; else record `call`. */
static int address_allowed(const void *addr, int family, const char *call) {
    if (family == AF_INET ? v4_local(addr) : family == AF_INET6 ? v6_local(addr) : 1) return 1;
    if (in_hosts(NULL, family, addr)) return 1;
    char host[INET6_ADDRSTRLEN] = "?", dest[80] = "address ";
    inet_ntop(family, addr, host, sizeof host);
    strcat(dest, host);
    record(call, dest);
    return 0;
}

/* --- the interposed calls --------------------------------------------------------- */

/* Chromium's IPv6 probe: at each request it connects a UDP socket to 2001:4860:4860::8888
 * (that sends nothing: the kernel only picks a route) to decide whether to ask for IPv6
 * addresses, and no switch turns it off. It is refused (no IPv6 route) without a record. */
static int chromium_ipv6_probe(int fd, const struct sockaddr *sa, socklen_t len) {
    static const unsigned char probe[16] = {0x20, 0x01, 0x48, 0x60, 0x48, 0x60, 0, 0,
                                            0, 0, 0, 0, 0, 0, 0x88, 0x88};
    int type = 0;
    socklen_t size = sizeof type;
    return sa && len >= sizeof(struct sockaddr_in6) && sa->sa_family == AF_INET6
        && memcmp(&((const struct sockaddr_in6 *)sa)->sin6_addr, probe, 16) == 0
        && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) == 0 && type == SOCK_DGRAM;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    REAL(connect);
    if (chromium_ipv6_probe(fd, addr, len) || !allowed(addr, len, "connect")) {
        errno = ENETUNREACH;
        return -1;
    }
    return real_connect(fd, addr, len);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr,
               socklen_t len) {
    REAL(sendto);
    if (!allowed(addr, len, "sendto")) { errno = ENETUNREACH; return -1; }
    return real_sendto(fd, buf, n, flags, addr, len);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    REAL(sendmsg);
    if (msg && !allowed(msg->msg_name, msg->msg_namelen, "sendmsg")) {
        errno = ENETUNREACH;
        return -1;
    }
    return real_sendmsg(fd, msg, flags);
}

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int n, int flags) {
    REAL(sendmmsg);
    for (unsigned int i = 0; vec && i < n; i++)
        if (!allowed(vec[i].msg_hdr.msg_name, vec[i].msg_hdr.msg_namelen, "sendmmsg")) {
            errno = ENETUNREACH;
            return -1;
        }
    return real_sendmmsg(fd, vec, n, flags);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
    REAL(getaddrinfo);
    if (!(hints && hints->ai_flags & AI_NUMERICHOST)
        && !name_allowed(node, hints ? hints->ai_family : AF_UNSPEC, "getaddrinfo"))
        return EAI_NONAME;
    return real_getaddrinfo(node, service, hints, res);
}

struct hostent *gethostbyname(const char *name) {
    REAL(gethostbyname);
    if (!name_allowed(name, AF_INET, "gethostbyname")) { h_errno = HOST_NOT_FOUND; return NULL; }
    return real_gethostbyname(name);
}

struct hostent *gethostbyname2(const char *name, int af) {
    REAL(gethostbyname2);
    if (!name_allowed(name, af, "gethostbyname2")) { h_errno = HOST_NOT_FOUND; return NULL; }
    return real_gethostbyname2(name, af);
}

int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t buflen,
                    struct hostent **result, int *h_errnop) {
    REAL(gethostbyname_r);
    if (!name_allowed(name, AF_INET, "gethostbyname_r")) {
        *result = NULL;
        *h_errnop = h_errno = HOST_NOT_FOUND;
        return ENOENT;
    }
    return real_gethostbyname_r(name, ret, buf, buflen, result, h_errnop);
}

int gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf, size_t buflen,
                     struct hostent **result, int *h_errnop) {
    REAL(gethostbyname2_r);
    if (!name_allowed(name, af, "gethostbyname2_r")) {
        *result = NULL;
        *h_errnop = h_errno = HOST_NOT_FOUND;
        return ENOENT;
    }
    return real_gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop);
}

struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type) {
    REAL(gethostbyaddr);
    if (!address_allowed(addr, type, "gethostbyaddr")) { h_errno = HOST_NOT_FOUND; return NULL; }
    return real_gethostbyaddr(addr, len, type);
}

int gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *ret, char *buf,
                    size_t buflen, struct hostent **result, int *h_errnop) {
    REAL(gethostbyaddr_r);
    if (!address_allowed(addr, type, "gethostbyaddr_r")) {
        *result = NULL;
        *h_errnop = h_errno = HOST_NOT_FOUND;
        return ENOENT;
    }
    return real_gethostbyaddr_r(addr, len, type, ret, buf, buflen, result, h_errnop);
}

int getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host, socklen_t hostlen,
                char *serv, socklen_t servlen, int flags) {
    REAL(getnameinfo);
    if (host && hostlen && !(flags & NI_NUMERICHOST) && sa && salen >= sizeof(sa_family_t)) {
        const void *addr = sa->sa_family == AF_INET && salen >= sizeof(struct sockaddr_in)
            ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
            : sa->sa_family == AF_INET6 && salen >= sizeof(struct sockaddr_in6)
            ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr : NULL;
        if (addr && !address_allowed(addr, sa->sa_family, "getnameinfo")) return EAI_NONAME;
    }
    return real_getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
}
