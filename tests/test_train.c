/* test_train.c - config parsing, LR schedules. (End-to-end training, resume
 * and the CLI error cases are in tests/cli_train.sh.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "train/schedule.h"
#include "train/train_config.h"
#include "test.h"

static char *write_tmp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/anvil_test_cfg_%d.yaml", (int)getpid());
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_defaults_and_yaml(void)
{
    TrainConfig tc;
    train_config_defaults(&tc);
    CHECK(tc.steps == 1000 && tc.batch_size == 8 && fabsf(tc.lr - 6e-4f) < 1e-9f);
    CHECK(tc.tie_embeddings == -1 && !strcmp(tc.device, "cpu"));
    const char *y = "# a run\n"
                    "model:\n  preset: gpt2-tiny\n  n_layer: 3\n  tie_embeddings: false\n"
                    "data:\n  train: a.txt\n"
                    "train:\n  lr: 1e-3\n  steps: 50\n  schedule: linear\n  seed: 7\n"
                    "eval:\n  every: 10\n  mcq:\n    task: piqa\n    data: p.jsonl\n"
                    "out_dir: runs/x\n";
    char *p = write_tmp(y);
    CHECKF(train_config_load_yaml(&tc, p) == 0, "%s", err_get());
    CHECK(!strcmp(tc.model_preset, "gpt2-tiny") && tc.n_layer == 3 && tc.tie_embeddings == 0);
    CHECK(fabsf(tc.lr - 1e-3f) < 1e-9f && tc.steps == 50 && tc.seed == 7 && !strcmp(tc.schedule, "linear"));
    CHECK(tc.eval_every == 10 && !strcmp(tc.eval_mcq_task, "piqa") && !strcmp(tc.eval_mcq_data, "p.jsonl"));
    CHECK(!strcmp(tc.out_dir, "runs/x") && !strcmp(tc.data_train, "a.txt"));
    CHECK(train_config_validate(&tc) == 0);
    /* --set overrides */
    CHECK(train_config_set(&tc, "train.lr=0.5") == 0 && fabsf(tc.lr - 0.5f) < 1e-9f);
    CHECK(train_config_set(&tc, "eval.mcq.limit=9") == 0 && tc.eval_mcq_limit == 9);
    /* the YAML dump reads back to the same configuration */
    char *dump = train_config_to_yaml(&tc);
    TrainConfig back;
    train_config_defaults(&back);
    p = write_tmp(dump);
    CHECKF(train_config_load_yaml(&back, p) == 0, "%s", err_get());
    CHECK(memcmp(&back, &tc, sizeof(tc)) == 0);
    free(dump);
    unlink(p);
}

static void expect_error(const char *yaml, const char *needle)
{
    TrainConfig tc;
    train_config_defaults(&tc);
    char *p = write_tmp(yaml);
    int rc = train_config_load_yaml(&tc, p);
    CHECKF(rc == -1 && strstr(err_get(), needle), "yaml %s -> rc %d, \"%s\" lacks \"%s\"", yaml, rc, err_get(),
           needle);
    unlink(p);
}

static void test_errors(void)
{
    expect_error("train:\n  lrr: 1\n", "unknown config key \"train.lrr\"");
    expect_error("train:\n  lr: fast\n", "train.lr: expected a number, got \"fast\"");
    expect_error("train:\n  steps: 1.5\n", "train.steps: expected an integer");
    expect_error("train:\n  lr: [1, 2]\n", "lists are not supported");
    expect_error("train: {lr: 1\n", "YAML syntax error");
    expect_error("model:\n  tie_embeddings: maybe\n", "expected true or false");
    expect_error("bogus: 1\n", "unknown config key \"bogus\"");
    /* line numbers */
    expect_error("train:\n  steps: 3\n  lr: x\n", ":3:");
    TrainConfig tc;
    train_config_defaults(&tc);
    CHECK(train_config_set(&tc, "train.nope=1") == -1 && strstr(err_get(), "train.nope"));
    CHECK(train_config_set(&tc, "novalue") == -1);
    strcpy(tc.data_train, "x");
    tc.tokens_per_step = 1000;
    CHECK(train_config_validate(&tc) == -1 && strstr(err_get(), "tokens_per_step"));
    tc.tokens_per_step = 0;
    strcpy(tc.schedule, "step");
    CHECK(train_config_validate(&tc) == -1 && strstr(err_get(), "train.schedule"));
}

static void test_schedules(void)
{
    Schedule s = {SCHED_COSINE, 1.0f, 0.1f, 10, 110};
    CHECK_CLOSE(schedule_lr(&s, 1), 0.1, 1e-6);
    CHECK_CLOSE(schedule_lr(&s, 10), 1.0, 1e-6);
    CHECK_CLOSE(schedule_lr(&s, 60), 0.55, 1e-6); /* half way: (1 + cos(pi/2))/2 */
    CHECK_CLOSE(schedule_lr(&s, 110), 0.1, 1e-6);
    CHECK_CLOSE(schedule_lr(&s, 500), 0.1, 1e-6);
    s.kind = SCHED_LINEAR;
    CHECK_CLOSE(schedule_lr(&s, 35), 1.0 - 0.9 * 0.25, 1e-6);
    s.kind = SCHED_CONSTANT;
    CHECK_CLOSE(schedule_lr(&s, 80), 1.0, 1e-6);
    Schedule nw = {SCHED_COSINE, 2.0f, 0.0f, 0, 100};
    CHECK_CLOSE(schedule_lr(&nw, 0), 2.0, 1e-6);
}

int main(void)
{
    RUN(test_defaults_and_yaml);
    RUN(test_errors);
    RUN(test_schedules);
    return test_summary();
}
