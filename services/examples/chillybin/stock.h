/**
 * \file stock.h
 * \brief chillybin's shelf: ingredient stock kept in SQLite.
 *
 * Opening the database applies any schema migrations it has not seen yet
 * (tracked in a `schema_version` table) and seeds a few ingredients when
 * the shelf is empty. Every change is one transaction that also writes a
 * line to the `ledger` table.
 *
 * Thread-safety: a stock handle may be used from any number of threads;
 * operations are serialised by a mutex (one SQLite connection).
 */
#ifndef CHILLYBIN_STOCK_H
#define CHILLYBIN_STOCK_H

#include <stdbool.h>

#include <jansson.h>

#include "sonar/status.h"

/** Most units a single restock may add. */
#define STOCK_MAX_RESTOCK 10000
/** Most units an ingredient may hold. */
#define STOCK_MAX_UNITS 1000000

typedef struct stock stock;

/** Outcome of a pick or a restock. */
typedef enum stock_result {
    STOCK_OK = 0,
    STOCK_UNKNOWN,   /**< no such ingredient (pick only) */
    STOCK_SHORT,     /**< not enough units (pick), or the shelf would overflow (restock) */
    STOCK_FAILED,    /**< the database failed; logged */
} stock_result;

/**
 * \brief Opens (creating if needed) the database at \p path, migrates it and
 *        seeds it when empty.
 * \param out new handle, written on success.
 * \return SONAR_OK; SONAR_ERR_DB (cannot open, migrate, or the file has a
 *         newer schema than this program knows), logged with the detail.
 */
sonar_status stock_open(stock **out, const char *path);

/** \brief Closes the database and frees the handle. Accepts NULL. */
void stock_close(stock *s);

/**
 * \brief Takes \p quantity units of \p name.
 * \param remaining receives the units left after the pick (STOCK_OK), or
 *        the units there are (STOCK_SHORT).
 */
stock_result stock_pick(stock *s, const char *name, long long quantity, long long *remaining);

/**
 * \brief Adds \p quantity units of \p name, creating the ingredient when new.
 * \param remaining receives the units there are afterwards (STOCK_OK) or
 *        now (STOCK_SHORT: the shelf would pass STOCK_MAX_UNITS).
 */
stock_result stock_restock(stock *s, const char *name, long long quantity, long long *remaining);

/** \brief The whole shelf as a JSON object `{"<name>": units, ...}` (new), or NULL on failure. */
json_t *stock_list(stock *s);

/** \brief The schema version the database is at. */
int stock_schema_version(stock *s);

/** \brief True when the database answers a trivial query. */
bool stock_healthy(stock *s);

#endif
