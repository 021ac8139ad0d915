/**
 * \file jafflr.h
 * \brief jafflr's view of chillybin's pick API, shared by the toastie
 *        handler (main.c) and the sonar checks (checks.c).
 *
 * jafflr speaks one of chillybin's two pick APIs, chosen at start by the
 * feature flag JAFFLR_USE_V2_PICK: its checks test exactly the API it
 * uses, so a chillybin candidate is judged by what this client needs.
 */
#ifndef JAFFLR_H
#define JAFFLR_H

#include <stdbool.h>

#include "sonar/service.h"

/** How one pick API is called and answers. Static data, never freed. */
typedef struct jafflr_pick_api {
    const char *path;        /**< "/pick" or "/v2/pick" (query: name, quantity) */
    const char *name_field;  /**< answer field naming the ingredient */
    const char *taken_field; /**< answer field with the units taken */
    bool v2;
} jafflr_pick_api;

/** chillybin's /pick: `{"name","quantity","remaining"}`. */
extern const jafflr_pick_api jafflr_pick_v1;
/** chillybin v2's /v2/pick: `{"ingredient","taken","remaining"}`. */
extern const jafflr_pick_api jafflr_pick_v2;

/**
 * \brief Registers jafflr's checks on chillybin (the table of cases in
 *        checks.c) for \p api. Before sonar_service_start().
 * \return what sonar_service_add_check() returned for the first failure, or SONAR_OK.
 */
sonar_status jafflr_add_checks(sonar_service *svc, const jafflr_pick_api *api);

#endif
