/* Claims of change ids (see claims.h). */
#include "claims.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/bus.h"
#include "sonar/log.h"
#include "sonar/outbox.h"
#include "sonar/protocol.h"

struct sonar_claims {
    jsCtx *js;
    pthread_mutex_t mu;
    sonar_gatherer *g; /* NULL once closed; under mu */
    int refs;          /* the owner's + one per claim awaiting its answer; under mu */
    atomic_llong made, lost;
};

static void claims_unref(sonar_claims *cl, int n)
{
    pthread_mutex_lock(&cl->mu);
    cl->refs -= n;
    bool last = cl->refs == 0;
    pthread_mutex_unlock(&cl->mu);
    if (!last)
        return;
    pthread_mutex_destroy(&cl->mu);
    free(cl);
}

/* The answer to a claim (nats.c's acknowledgement thread). */
static void on_answer(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    (void)pa;
    sonar_claims *cl = closure;
    const char *subject = natsMsg_GetSubject(msg);
    if (subject != NULL && strncmp(subject, SONAR_CLAIM_PREFIX, strlen(SONAR_CLAIM_PREFIX)) == 0) {
        const char *change_id = subject + strlen(SONAR_CLAIM_PREFIX);
        bool lost = pae != NULL && pae->ErrCode == JSStreamWrongLastSequenceErr;
        if (pae != NULL && !lost)
            sonar_log(SONAR_LOG_WARN, "change %s: claim failed (%s): gathered as ours",
                      change_id, pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
        if (lost)
            atomic_fetch_add(&cl->lost, 1);
        /* Under mu: close() waits for an answer being handed over. */
        pthread_mutex_lock(&cl->mu);
        if (cl->g != NULL)
            sonar_gatherer_claimed(cl->g, change_id, !lost);
        pthread_mutex_unlock(&cl->mu);
    }
    natsMsg_Destroy(msg); /* ours, in every case */
    claims_unref(cl, 1);
}

sonar_status sonar_claims_open(sonar_claims **out, natsConnection *nc, sonar_gatherer *g)
{
    const char *subjects[] = {SONAR_CLAIM_PREFIX "*", NULL};
    sonar_stream_config sc = {.name = SONAR_CLAIMS_STREAM, .subjects = subjects,
                              .memory = true, .max_age_ms = SONAR_CLAIMS_MAX_AGE_MS};
    sonar_status s = sonar_stream_ensure(nc, &sc);
    if (s != SONAR_OK)
        return s;
    sonar_claims *cl = calloc(1, sizeof *cl);
    if (cl == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&cl->mu, NULL);
    cl->g = g;
    cl->refs = 1;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.AckHandler = on_answer;
    jo.PublishAsync.AckHandlerClosure = cl;
    natsStatus ns = natsConnection_JetStream(&cl->js, nc, &jo);
    if (ns != NATS_OK) {
        pthread_mutex_destroy(&cl->mu);
        free(cl);
        return sonar_bus_status(ns, "claims: JetStream context");
    }
    *out = cl;
    return SONAR_OK;
}

bool sonar_claims_send(sonar_claims *cl, const char *change_id, const char *owner)
{
    char subject[sizeof SONAR_CLAIM_PREFIX + SONAR_NAME_MAX];
    snprintf(subject, sizeof subject, SONAR_CLAIM_PREFIX "%s", change_id);
    natsMsg *m = NULL;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.ExpectNoMessage = true;
    pthread_mutex_lock(&cl->mu);
    cl->refs++; /* before the answer can come */
    pthread_mutex_unlock(&cl->mu);
    natsStatus ns = natsMsg_Create(&m, subject, NULL, owner, (int)strlen(owner));
    if (ns == NATS_OK)
        ns = js_PublishMsgAsync(cl->js, &m, &po); /* takes m on success */
    natsMsg_Destroy(m);
    if (ns != NATS_OK) {
        sonar_log(SONAR_LOG_DEBUG, "change %s: claim not sent (%s): gathered as ours", change_id,
                  natsStatus_GetText(ns));
        claims_unref(cl, 1);
        return false;
    }
    atomic_fetch_add(&cl->made, 1);
    return true;
}

void sonar_claims_counts(sonar_claims *cl, int64_t *made, int64_t *lost)
{
    *made = atomic_load(&cl->made);
    *lost = atomic_load(&cl->lost);
}

void sonar_claims_close(sonar_claims *cl)
{
    if (cl == NULL)
        return;
    pthread_mutex_lock(&cl->mu);
    cl->g = NULL;
    pthread_mutex_unlock(&cl->mu);
    /* Claims still unanswered are taken back: their answers will not come.
     * (nats.c 3.4.1 crashes asking a context that never published.) */
    natsMsgList pending = {0};
    int taken = 0;
    if (atomic_load(&cl->made) > 0 && js_PublishAsyncGetPendingList(&pending, cl->js) == NATS_OK) {
        taken = pending.Count;
        natsMsgList_Destroy(&pending);
    }
    jsCtx_Destroy(cl->js);
    claims_unref(cl, 1 + taken);
}
