/* A NATS connection configured the way sonar needs it. */
#include "sonar/bus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus_internal.h"
#include "internal.h"
#include "sonar/protocol.h"

struct sonar_bus {
    natsConnection *nc;
    natsOptions *direct_opts; /* same settings, no reconnect: sonar__bus_connect_direct() */
    char url[512];
};

static const char *env_or(const char *current, const char *name)
{
    if (current != NULL)
        return current;
    const char *v = getenv(name);
    return (v != NULL && *v != '\0') ? v : NULL;
}

void sonar_bus_config_from_env(sonar_bus_config *cfg)
{
    cfg->urls = env_or(cfg->urls, "NATS_URL");
    cfg->user = env_or(cfg->user, "NATS_USER");
    cfg->password = env_or(cfg->password, "NATS_PASSWORD");
    cfg->token = env_or(cfg->token, "NATS_TOKEN");
    cfg->creds_file = env_or(cfg->creds_file, "NATS_CREDS");
    cfg->nkey_public = env_or(cfg->nkey_public, "NATS_NKEY");
    cfg->nkey_seed_file = env_or(cfg->nkey_seed_file, "NATS_NKEY_SEED");
    cfg->tls_ca = env_or(cfg->tls_ca, "NATS_CA");
    cfg->tls_cert = env_or(cfg->tls_cert, "NATS_CERT");
    cfg->tls_key = env_or(cfg->tls_key, "NATS_KEY");
}

sonar_status sonar_bus_status(natsStatus s, const char *what)
{
    if (s == NATS_OK)
        return SONAR_OK;
    const char *detail = nats_GetLastError(NULL);
    sonar_status mapped = SONAR_ERR_NATS;
    if (s == NATS_TIMEOUT)
        mapped = SONAR_ERR_TIMEOUT;
    else if (s == NATS_NO_RESPONDERS)
        mapped = SONAR_ERR_NO_RESPONDERS;
    else if (s == NATS_NO_MEMORY)
        mapped = SONAR_ERR_NOMEM;
    return sonar__fail(mapped, "%s: %s%s%s%s", what, natsStatus_GetText(s),
                       detail && *detail ? " (" : "", detail ? detail : "",
                       detail && *detail ? ")" : "");
}

static sonar_status check_readable(const char *what, const char *path)
{
    if (path != NULL && access(path, R_OK) != 0)
        return sonar__fail(SONAR_ERR_INVALID, "%s \"%s\" is not readable", what, path);
    return SONAR_OK;
}

/* Splits "a,b,c" into a NULL-terminated array of trimmed URLs (new). */
static char **split_urls(const char *urls, int *count)
{
    char *copy = strdup(urls);
    if (copy == NULL)
        return NULL;
    int n = 1;
    for (const char *p = copy; *p; p++)
        n += *p == ',';
    char **out = calloc((size_t)n + 1, sizeof *out);
    if (out == NULL) {
        free(copy);
        return NULL;
    }
    int k = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        size_t len = strlen(tok);
        while (len > 0 && tok[len - 1] == ' ')
            tok[--len] = '\0';
        if (len > 0)
            out[k++] = strdup(tok);
    }
    free(copy);
    *count = k;
    return out;
}

static void free_urls(char **urls)
{
    if (urls == NULL)
        return;
    for (char **p = urls; *p; p++)
        free(*p);
    free(urls);
}

/* The first connect succeeded after all (retry_on_failed_connect). */
static void on_late_connect(natsConnection *nc, void *closure)
{
    (void)closure;
    char url[256];
    if (natsConnection_GetConnectedUrl(nc, url, sizeof url) != NATS_OK)
        url[0] = '\0';
    sonar_log(SONAR_LOG_INFO, "connected to %s", url);
}

/*
 * The options of a bus connection. `direct` builds those of the extra
 * connections a module opens for itself (sonar__bus_connect_direct()): no
 * reconnect -- so nats.c never buffers a publish during a reconnect to send
 * it later, after the caller already retried what the old socket lost --
 * and no SendAsap, so pipelined publishes are written in batches.
 */
static natsStatus build_options(natsOptions **out, const sonar_bus_config *cfg, char **list,
                                int n_urls, bool direct)
{
    natsOptions *opts = NULL;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetServers(opts, (const char **)list, n_urls);
    if (s == NATS_OK && cfg->name) {
        char name[256];
        snprintf(name, sizeof name, "%s%s", cfg->name, direct ? " (direct)" : "");
        s = natsOptions_SetName(opts, name);
    }
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms
                                                                     : 2000);
    if (direct) {
        if (s == NATS_OK)
            s = natsOptions_SetAllowReconnect(opts, false);
    } else {
        /* Request and reply paths must not wait for the flusher thread (~1 ms vs ~0.2 ms). */
        if (s == NATS_OK)
            s = natsOptions_SetSendAsap(opts, true);
        if (s == NATS_OK)
            s = natsOptions_SetMaxReconnect(opts, -1);
        if (s == NATS_OK)
            s = natsOptions_SetReconnectWait(opts, 250);
        if (s == NATS_OK)
            s = natsOptions_SetReconnectJitter(opts, 100, 1000);
        /* With a connected callback nats.c retries in the background; with
         * NULL it would block in natsConnection_Connect() until connected. */
        if (s == NATS_OK && cfg->retry_on_failed_connect)
            s = natsOptions_SetRetryOnFailedConnect(opts, true, on_late_connect, NULL);
        if (s == NATS_OK && cfg->no_echo)
            s = natsOptions_SetNoEcho(opts, true);
    }
    if (s == NATS_OK && cfg->user)
        s = natsOptions_SetUserInfo(opts, cfg->user, cfg->password ? cfg->password : "");
    if (s == NATS_OK && cfg->token)
        s = natsOptions_SetToken(opts, cfg->token);
    if (s == NATS_OK && cfg->creds_file)
        s = natsOptions_SetUserCredentialsFromFiles(opts, cfg->creds_file, NULL);
    if (s == NATS_OK && cfg->nkey_seed_file)
        s = natsOptions_SetNKeyFromSeed(opts, cfg->nkey_public, cfg->nkey_seed_file);
    if (s == NATS_OK && (cfg->tls_ca || cfg->tls_cert))
        s = natsOptions_SetSecure(opts, true);
    if (s == NATS_OK && cfg->tls_ca)
        s = natsOptions_LoadCATrustedCertificates(opts, cfg->tls_ca);
    if (s == NATS_OK && cfg->tls_cert)
        s = natsOptions_LoadCertificatesChain(opts, cfg->tls_cert, cfg->tls_key);
    if (s != NATS_OK) {
        natsOptions_Destroy(opts);
        return s;
    }
    *out = opts;
    return NATS_OK;
}

sonar_status sonar_bus_connect(sonar_bus **out, const sonar_bus_config *cfg_in)
{
    sonar_bus_config cfg = {0};
    if (cfg_in != NULL)
        cfg = *cfg_in;
    const char *urls = cfg.urls ? cfg.urls : SONAR_DEFAULT_NATS_URL;

    sonar_status st = SONAR_OK;
    if ((st = check_readable("credentials file", cfg.creds_file)) != SONAR_OK ||
        (st = check_readable("nkey seed file", cfg.nkey_seed_file)) != SONAR_OK ||
        (st = check_readable("TLS CA file", cfg.tls_ca)) != SONAR_OK ||
        (st = check_readable("TLS certificate file", cfg.tls_cert)) != SONAR_OK ||
        (st = check_readable("TLS key file", cfg.tls_key)) != SONAR_OK)
        return st;
    if ((cfg.tls_cert == NULL) != (cfg.tls_key == NULL))
        return sonar__fail(SONAR_ERR_INVALID, "TLS certificate and key must be given together");
    if ((cfg.nkey_public == NULL) != (cfg.nkey_seed_file == NULL))
        return sonar__fail(SONAR_ERR_INVALID, "NKey public key and seed file must be given together");
    if (cfg.user != NULL && cfg.token != NULL)
        return sonar__fail(SONAR_ERR_INVALID, "give either user/password or a token, not both");

    int n_urls = 0;
    char **list = split_urls(urls, &n_urls);
    if (list == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    if (n_urls == 0) {
        free_urls(list);
        return sonar__fail(SONAR_ERR_INVALID, "no NATS server URL given");
    }

    sonar_bus *bus = calloc(1, sizeof *bus);
    natsOptions *opts = NULL;
    natsStatus s = bus ? build_options(&opts, &cfg, list, n_urls, false) : NATS_NO_MEMORY;
    if (s == NATS_OK)
        s = build_options(&bus->direct_opts, &cfg, list, n_urls, true);
    if (s != NATS_OK) {
        st = sonar_bus_status(s, "configuring the NATS connection");
        if (st == SONAR_ERR_NATS)
            st = SONAR_ERR_INVALID;
        goto fail;
    }
    s = natsConnection_Connect(&bus->nc, opts);
    if (s != NATS_OK && !(s == NATS_NOT_YET_CONNECTED && cfg.retry_on_failed_connect)) {
        char what[600];
        snprintf(what, sizeof what, "connecting to %s", urls);
        st = sonar_bus_status(s, what);
        if (st == SONAR_ERR_NO_RESPONDERS || st == SONAR_ERR_TIMEOUT)
            st = SONAR_ERR_NATS;
        goto fail;
    }
    natsOptions_Destroy(opts);
    free_urls(list);
    *out = bus;
    return SONAR_OK;

fail:
    natsOptions_Destroy(opts);
    free_urls(list);
    if (bus) {
        natsConnection_Destroy(bus->nc);
        natsOptions_Destroy(bus->direct_opts);
    }
    free(bus);
    return st;
}

natsConnection *sonar_bus_nats(sonar_bus *bus)
{
    return bus->nc;
}

const char *sonar_bus_url(sonar_bus *bus)
{
    if (natsConnection_GetConnectedUrl(bus->nc, bus->url, sizeof bus->url) != NATS_OK)
        bus->url[0] = '\0';
    return bus->url;
}

sonar_status sonar_bus_discover(sonar_bus *bus)
{
    char *discover = NULL;
    sonar_status s = sonar_discover_encode(&discover);
    if (s != SONAR_OK)
        return s;
    natsStatus ns = natsConnection_PublishString(bus->nc, SONAR_SUBJ_DISCOVER, discover);
    if (ns == NATS_OK)
        ns = natsConnection_FlushTimeout(bus->nc, 5000);
    free(discover);
    return sonar_bus_status(ns, "publishing sonar.discover");
}

void sonar_bus_destroy(sonar_bus *bus)
{
    if (bus == NULL)
        return;
    if (bus->nc) {
        natsConnection_FlushTimeout(bus->nc, 1000);
        natsConnection_Close(bus->nc);
        natsConnection_Destroy(bus->nc);
    }
    natsOptions_Destroy(bus->direct_opts);
    free(bus);
}

sonar_status sonar__bus_connect_direct(sonar_bus *bus, natsConnection **out)
{
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_Connect(&nc, bus->direct_opts);
    if (s != NATS_OK) {
        natsConnection_Destroy(nc);
        return sonar_bus_status(s, "opening a direct connection");
    }
    *out = nc;
    return SONAR_OK;
}
