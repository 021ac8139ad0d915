/* Gathers running on other coordinators (see remote.h). */
#include "remote.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sonar/protocol.h"
#include "sonar/util.h"

typedef struct entry {
    char change_id[SONAR_NAME_MAX + 1];
    int64_t deadline_ms; /* monotonic: the gather's deadline */
    char *report;        /* NULL until it came */
    struct entry *next;  /* newest first */
} entry;

struct sonar_remote {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; a report came, or cancel */
    entry *head;
    size_t n;
    bool cancelled;
};

sonar_status sonar_remote_create(sonar_remote **out)
{
    sonar_remote *r = calloc(1, sizeof *r);
    if (r == NULL)
        return sonar__fail(SONAR_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&r->mu, NULL);
    sonar_cond_init_monotonic(&r->cond);
    *out = r;
    return SONAR_OK;
}

static void entry_free(entry *e)
{
    free(e->report);
    free(e);
}

void sonar_remote_destroy(sonar_remote *r)
{
    if (r == NULL)
        return;
    while (r->head != NULL) {
        entry *e = r->head;
        r->head = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cond);
    free(r);
}

/* Drops entries past their keep time, and the oldest beyond the cap (under mu). */
static void prune(sonar_remote *r, int64_t now)
{
    size_t kept = 0;
    for (entry **pp = &r->head; *pp != NULL;) {
        entry *e = *pp;
        if (kept >= SONAR_REMOTE_MAX || now > e->deadline_ms + SONAR_REMOTE_KEEP_MS) {
            *pp = e->next;
            entry_free(e);
            r->n--;
        } else {
            kept++;
            pp = &e->next;
        }
    }
}

static entry *find(sonar_remote *r, const char *change_id)
{
    for (entry *e = r->head; e != NULL; e = e->next)
        if (strcmp(e->change_id, change_id) == 0)
            return e;
    return NULL;
}

void sonar_remote_begun(sonar_remote *r, const char *change_id, int64_t deadline_ms)
{
    if (!sonar_name_valid(change_id))
        return;
    pthread_mutex_lock(&r->mu);
    int64_t now = sonar_now_ms();
    prune(r, now);
    entry *e = find(r, change_id);
    if (e != NULL) {
        if (deadline_ms > e->deadline_ms)
            e->deadline_ms = deadline_ms;
    } else if ((e = calloc(1, sizeof *e)) != NULL) {
        snprintf(e->change_id, sizeof e->change_id, "%s", change_id);
        e->deadline_ms = deadline_ms;
        e->next = r->head;
        r->head = e;
        r->n++;
        prune(r, now); /* the cap */
    }
    pthread_mutex_unlock(&r->mu);
}

void sonar_remote_report(sonar_remote *r, const char *change_id, const char *report, size_t len)
{
    pthread_mutex_lock(&r->mu);
    entry *e = find(r, change_id);
    if (e != NULL && e->report == NULL) {
        e->report = strndup(report, len);
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&r->mu);
}

bool sonar_remote_wait(sonar_remote *r, const char *change_id, char **out_report)
{
    bool got = false;
    pthread_mutex_lock(&r->mu);
    entry *e = find(r, change_id);
    if (e == NULL || r->cancelled) {
        pthread_mutex_unlock(&r->mu);
        return false;
    }
    for (;;) {
        /* Looked up again after every wait: prune may have freed it. */
        e = find(r, change_id);
        if (e == NULL || r->cancelled)
            break;
        if (e->report != NULL) {
            *out_report = strdup(e->report);
            got = *out_report != NULL;
            break;
        }
        int64_t until = e->deadline_ms + SONAR_REMOTE_GRACE_MS;
        if (sonar_now_ms() >= until)
            break;
        sonar_cond_wait_until(&r->cond, &r->mu, until);
    }
    pthread_mutex_unlock(&r->mu);
    return got;
}

bool sonar_remote_gone(sonar_remote *r, const char *change_id)
{
    pthread_mutex_lock(&r->mu);
    entry *e = find(r, change_id);
    bool gone = e != NULL && e->report == NULL &&
                sonar_now_ms() >= e->deadline_ms + SONAR_REMOTE_GRACE_MS;
    pthread_mutex_unlock(&r->mu);
    return gone;
}

size_t sonar_remote_count(sonar_remote *r)
{
    pthread_mutex_lock(&r->mu);
    prune(r, sonar_now_ms());
    size_t n = r->n;
    pthread_mutex_unlock(&r->mu);
    return n;
}

void sonar_remote_cancel(sonar_remote *r)
{
    pthread_mutex_lock(&r->mu);
    r->cancelled = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
}
