/* Missed reports replayed from the events stream (see catchup.h). */
#include "catchup.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/bus.h"
#include "sonar/log.h"
#include "sonar/util.h"

/* A replay waits this long per message before looking at the stop flag. */
#define SLICE_MS 250
/* ... and gives up (to try again later) after this long without one. */
#define STALL_MS 10000
/* How often the thread looks at the connection for reconnects, and how
 * long it waits for the server's answer to its probe of the link. */
#define POLL_MS 1000
#define PROBE_MS 1000

struct sonar_catchup {
    natsConnection *nc; /* borrowed */
    char *stream;
    char *subject;
    sonar_catchup_fn fn;
    void *closure;
    int64_t first_from_ms; /* the replay at start begins here */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; signalled on stop */
    bool stop;
    sonar_catchup_stats st;
};

static bool stopping(sonar_catchup *cu)
{
    pthread_mutex_lock(&cu->mu);
    bool stop = cu->stop;
    pthread_mutex_unlock(&cu->mu);
    return stop;
}

static void count(sonar_catchup *cu, int64_t *counter, int64_t n)
{
    pthread_mutex_lock(&cu->mu);
    *counter += n;
    pthread_mutex_unlock(&cu->mu);
}

/* Whether the stream holds anything stored at or after from_ns; false with
 * *failed when it could not be asked. A missing stream holds nothing. */
static bool stream_has_since(sonar_catchup *cu, jsCtx *js, int64_t from_ns, bool *failed)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus ns = js_GetStreamInfo(&si, js, cu->stream, NULL, &jerr);
    if (ns == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr)
        return false;
    if (ns != NATS_OK) {
        sonar_bus_status(ns, "stream info");
        *failed = true;
        return false;
    }
    bool has = si->State.Msgs > 0 && si->State.LastTime >= from_ns;
    jsStreamInfo_Destroy(si);
    return has;
}

/* Hands every message on the subject stored since from_wall_ms to the
 * callback, through an ordered consumer, until none is pending. */
static sonar_status replay(sonar_catchup *cu, int64_t from_wall_ms, int64_t *handed)
{
    *handed = 0;
    jsCtx *js = NULL;
    natsStatus ns = natsConnection_JetStream(&js, cu->nc, NULL);
    if (ns != NATS_OK)
        return sonar_bus_status(ns, "JetStream context");
    int64_t from_ns = (from_wall_ms > 0 ? from_wall_ms : 0) * 1000000;
    bool failed = false;
    if (!stream_has_since(cu, js, from_ns, &failed)) {
        jsCtx_Destroy(js);
        return failed ? SONAR_ERR_NATS : SONAR_OK;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = cu->stream;
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverByStartTime;
    so.Config.OptStartTime = from_ns;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    ns = js_SubscribeSync(&sub, js, cu->subject, NULL, &so, &jerr);
    if (ns != NATS_OK) {
        jsCtx_Destroy(js);
        return sonar_bus_status(ns, "replay subscription");
    }
    sonar_status s = SONAR_OK;
    /* How many are still to come, as the server last said; -1: unknown.
     * Nothing on this subject since then: the consumer says so at once. */
    int64_t pending = -1;
    jsConsumerInfo *ci = NULL;
    if (natsSubscription_GetConsumerInfo(&ci, sub, NULL, &jerr) == NATS_OK)
        pending = (int64_t)ci->NumPending + (int64_t)ci->Delivered.Consumer;
    jsConsumerInfo_Destroy(ci);
    bool done = pending == 0;
    int64_t last_msg_ms = sonar_now_ms();
    while (!done && !stopping(cu)) {
        natsMsg *msg = NULL;
        ns = natsSubscription_NextMsg(&msg, sub, SLICE_MS);
        if (ns == NATS_TIMEOUT) {
            if (sonar_now_ms() - last_msg_ms <= STALL_MS)
                continue;
            /* Silence although more were announced: try again later. With
             * nothing announced (the server could not be asked) and nothing
             * come, there is nothing to replay. */
            if (pending > 0)
                s = sonar__fail(SONAR_ERR_TIMEOUT, "replay of %s stalled", cu->subject);
            break;
        }
        if (ns != NATS_OK) {
            s = sonar_bus_status(ns, "replay");
            break;
        }
        last_msg_ms = sonar_now_ms();
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
            cu->fn(cu->closure, msg, meta->Timestamp / 1000000);
            (*handed)++;
            pending = (int64_t)meta->NumPending;
            done = pending == 0;
            jsMsgMetaData_Destroy(meta);
        }
        natsMsg_Destroy(msg);
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    return s;
}

static uint64_t reconnects(natsConnection *nc)
{
    natsStatistics *stats = NULL;
    uint64_t n = 0;
    if (natsStatistics_Create(&stats) == NATS_OK && natsConnection_GetStats(nc, stats) == NATS_OK)
        natsStatistics_GetCounts(stats, NULL, NULL, NULL, NULL, &n);
    natsStatistics_Destroy(stats);
    return n;
}

static void *catchup_main(void *arg)
{
    sonar_catchup *cu = arg;
    pthread_setname_np(pthread_self(), "sonard-catchup");
    int64_t pending_from = cu->first_from_ms; /* a replay to do from then; -1: none */
    bool warned = false; /* one warning per series of failures */
    uint64_t seen_reconnects = reconnects(cu->nc);
    int64_t up_wall_ms = sonar_wall_ms(); /* the link was up then (proven by a round trip) */
    while (!stopping(cu)) {
        if (pending_from >= 0 && natsConnection_Status(cu->nc) == NATS_CONN_STATUS_CONNECTED) {
            int64_t handed = 0;
            sonar_status s = replay(cu, pending_from, &handed);
            count(cu, &cu->st.replayed, handed);
            if (s == SONAR_OK) {
                count(cu, &cu->st.runs, 1);
                if (handed > 0)
                    sonar_log(SONAR_LOG_INFO, "caught up on %s: %lld message(s) replayed",
                              cu->subject, (long long)handed);
                pending_from = -1;
                warned = false;
            } else if (!stopping(cu)) {
                count(cu, &cu->st.failures, 1);
                if (!warned)
                    sonar_log(SONAR_LOG_WARN, "catching up on %s: %s (trying again every second)",
                              cu->subject, sonar_last_error());
                warned = true;
            }
        }
        pthread_mutex_lock(&cu->mu);
        if (!cu->stop)
            sonar_cond_wait_until(&cu->cond, &cu->mu, sonar_now_ms() + POLL_MS);
        pthread_mutex_unlock(&cu->mu);
        if (stopping(cu) || natsConnection_Status(cu->nc) != NATS_CONN_STATUS_CONNECTED)
            continue;
        uint64_t r = reconnects(cu->nc);
        if (r != seen_reconnects) {
            /* Lost and back since the last look: replay from before the loss. */
            seen_reconnects = r;
            int64_t from = up_wall_ms - SONAR_CATCHUP_MARGIN_MS;
            if (pending_from < 0 || from < pending_from)
                pending_from = from;
        }
        /* "Connected" is what the client believes: a link that died
         * silently (or a process that was paused) still says so until the
         * loss is noticed, and what was published meanwhile never came.
         * Only a round trip proves the link was up when it began. */
        int64_t probe_wall_ms = sonar_wall_ms();
        if (natsConnection_FlushTimeout(cu->nc, PROBE_MS) == NATS_OK &&
            reconnects(cu->nc) == seen_reconnects)
            up_wall_ms = probe_wall_ms; /* (a round trip on a new link proves nothing of the gap) */
    }
    return NULL;
}

sonar_status sonar_catchup_start(sonar_catchup **out, natsConnection *nc, const char *stream,
                                 const char *subject, int64_t from_wall_ms, sonar_catchup_fn fn,
                                 void *closure)
{
    if (out == NULL || nc == NULL || stream == NULL || subject == NULL || fn == NULL ||
        from_wall_ms < 0)
        return sonar__fail(SONAR_ERR_INVALID, "catch-up: missing argument");
    sonar_catchup *cu = calloc(1, sizeof *cu);
    if (cu == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    cu->nc = nc;
    cu->stream = strdup(stream);
    cu->subject = strdup(subject);
    cu->fn = fn;
    cu->closure = closure;
    cu->first_from_ms = from_wall_ms;
    pthread_mutex_init(&cu->mu, NULL);
    sonar_cond_init_monotonic(&cu->cond);
    if (cu->stream == NULL || cu->subject == NULL ||
        pthread_create(&cu->thread, NULL, catchup_main, cu) != 0) {
        pthread_mutex_destroy(&cu->mu);
        pthread_cond_destroy(&cu->cond);
        free(cu->stream);
        free(cu->subject);
        free(cu);
        return sonar__fail(SONAR_ERR_NOMEM, "catch-up thread not started");
    }
    *out = cu;
    return SONAR_OK;
}

void sonar_catchup_stats_get(sonar_catchup *cu, sonar_catchup_stats *out)
{
    pthread_mutex_lock(&cu->mu);
    *out = cu->st;
    pthread_mutex_unlock(&cu->mu);
}

void sonar_catchup_destroy(sonar_catchup *cu)
{
    if (cu == NULL)
        return;
    pthread_mutex_lock(&cu->mu);
    cu->stop = true;
    pthread_cond_signal(&cu->cond);
    pthread_mutex_unlock(&cu->mu);
    pthread_join(cu->thread, NULL);
    pthread_mutex_destroy(&cu->mu);
    pthread_cond_destroy(&cu->cond);
    free(cu->stream);
    free(cu->subject);
    free(cu);
}
