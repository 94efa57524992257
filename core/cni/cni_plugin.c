/* pylium-cni, the CNI plugin as `pylium install-cni` installs it: a small C program that hands
 * the CNI command to the agent (POST /v1/cni/exec on its unix socket) and prints the answer.
 * All CNI logic lives in the agent (core/cni.py); this exists because a Python process costs
 * ~25 ms of CPU to start, and twenty ADDs at once on two cores must not wait for that.
 *
 * Without the agent: VERSION is answered here, DEL is queued in <run-dir>/cni-del-queue/ (the
 * agent carries it out when it starts), anything else fails with CNI code 11 (50 for STATUS).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define INPUT_LIMIT (1 << 20)
#define DEFAULT_SOCKET "/var/run/pylium/pylium.sock"

static const char *SUPPORTED = "[\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]";
static const char *VARIABLES[][2] = {
    {"CNI_COMMAND", "X-CNI-Command"}, {"CNI_CONTAINERID", "X-CNI-ContainerID"}, {"CNI_NETNS", "X-CNI-Netns"},
    {"CNI_IFNAME", "X-CNI-Ifname"},   {"CNI_ARGS", "X-CNI-Args"},               {"CNI_PATH", "X-CNI-Path"},
};

static char input[INPUT_LIMIT + 1];
static size_t input_len;

/* The string value of "key" in the configuration, found by a plain scan (values needed here,
 * a socket path and a version, hold no escapes). */
static int json_string(const char *key, char *out, size_t size) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const char *p = strstr(input, pattern);
    if (!p)
        return 0;
    p += strlen(pattern);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ':')
        p++;
    if (*p++ != '"')
        return 0;
    size_t n = 0;
    while (*p && *p != '"' && *p != '\\' && n + 1 < size)
        out[n++] = *p++;
    out[n] = 0;
    return *p == '"';
}

static void json_escaped(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static int fail(int code, const char *msg, const char *details) {
    char version[32] = "1.1.0";
    json_string("cniVersion", version, sizeof version);
    printf("{\"cniVersion\": \"%s\", \"code\": %d, \"msg\": ", version, code);
    json_escaped(stdout, msg);
    printf(", \"details\": ");
    json_escaped(stdout, details);
    printf("}\n");
    return 1;
}

/* The agent is down: leave the DEL on disk for it. */
static int queue_delete(const char *socket_path) {
    const char *cid = getenv("CNI_CONTAINERID"), *ifname = getenv("CNI_IFNAME");
    if (!cid || !*cid)
        return fail(4, "missing environment variable CNI_CONTAINERID", "");
    if (!ifname)
        ifname = "";
    char dir[PATH_MAX], tmp[PATH_MAX + 64], final[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s", socket_path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return fail(5, "socketPath must be absolute", socket_path);
    snprintf(slash, sizeof dir - (slash - dir), "/cni-del-queue");
    mkdir(dir, 0700);
    uint64_t h = 1469598103934665603ULL; /* FNV-1a of container id / ifname */
    for (const char *s = cid; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h = (h ^ '/') * 1099511628211ULL;
    for (const char *s = ifname; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    snprintf(tmp, sizeof tmp, "%s/.%016llx.tmp", dir, (unsigned long long)h);
    snprintf(final, sizeof final, "%s/%016llx.json", dir, (unsigned long long)h);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return fail(5, "cannot queue the deletion", strerror(errno));
    fprintf(f, "{\"container_id\": ");
    json_escaped(f, cid);
    fprintf(f, ", \"ifname\": ");
    json_escaped(f, ifname);
    fprintf(f, "}\n");
    fflush(f);
    fsync(fileno(f));
    fclose(f);
    if (rename(tmp, final) != 0)
        return fail(5, "cannot queue the deletion", strerror(errno));
    return 0;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (command && !strcmp(command, "VERSION")) {
        printf("{\"cniVersion\": \"1.1.0\", \"supportedVersions\": %s}\n", SUPPORTED);
        return 0;
    }
    ssize_t n;
    while (input_len < INPUT_LIMIT && (n = read(0, input + input_len, INPUT_LIMIT - input_len)) > 0)
        input_len += (size_t)n;
    input[input_len] = 0;
    const char *first = input, *last = input + input_len;
    while (*first == ' ' || *first == '\t' || *first == '\n' || *first == '\r')
        first++;
    while (last > first && (last[-1] == ' ' || last[-1] == '\t' || last[-1] == '\n' || last[-1] == '\r'))
        last--;
    if (*first != '{' || last[-1] != '}') /* the agent parses it; this only catches what cannot be JSON */
        return fail(6, "network configuration on stdin is not valid JSON", "not a JSON object");

    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)] = DEFAULT_SOCKET;
    json_string("socketPath", socket_path, sizeof socket_path);

    char headers[8192];
    size_t used = snprintf(headers, sizeof headers,
                           "POST /v1/cni/exec HTTP/1.1\r\nHost: pylium\r\nContent-Type: application/json\r\n"
                           "Content-Length: %zu\r\nConnection: close\r\n", input_len);
    for (size_t i = 0; i < sizeof VARIABLES / sizeof VARIABLES[0]; i++) {
        const char *value = getenv(VARIABLES[i][0]);
        if (!value)
            continue;
        if (strpbrk(value, "\r\n"))
            return fail(4, "environment variable holds a line break", VARIABLES[i][0]);
        used += snprintf(headers + used, sizeof headers - used, "%s: %s\r\n", VARIABLES[i][1], value);
        if (used >= sizeof headers)
            return fail(4, "CNI environment variables too long", "");
    }
    used += snprintf(headers + used, sizeof headers - used, "\r\n");

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (command && !strcmp(command, "DEL"))
            return queue_delete(socket_path);
        int code = command && !strcmp(command, "STATUS") ? 50 : 11;
        return fail(code, "the pylium agent is not reachable", socket_path);
    }
    if (write_all(s, headers, used) || write_all(s, input, input_len))
        return fail(11, "cannot talk to the pylium agent", strerror(errno));

    static char answer[INPUT_LIMIT + 8192];
    size_t got = 0;
    while (got < sizeof answer - 1 && (n = read(s, answer + got, sizeof answer - 1 - got)) > 0)
        got += (size_t)n;
    answer[got] = 0;
    close(s);
    int status = 0;
    if (sscanf(answer, "HTTP/1.%*d %d", &status) != 1)
        return fail(100, "the agent sent no valid HTTP answer", "");
    char *body = strstr(answer, "\r\n\r\n");
    char *exit_header = strstr(answer, "\r\nX-CNI-Exit: ");
    if (!body || status != 200 || !exit_header || exit_header > body)
        return fail(100, "the agent could not run the CNI command", body ? body + 4 : "");
    fputs(body + 4, stdout);
    return atoi(exit_header + strlen("\r\nX-CNI-Exit: "));
}
