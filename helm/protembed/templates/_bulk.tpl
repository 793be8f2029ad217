{{/* The bulk embedding Job (bulk-job.yaml): names, labels, checks and the shard command. */}}
{{- define "protembed.bulk.fullname" -}}
{{- printf "%s-bulk" (include "protembed.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* component=bulk: never component=server, so the Service and the PDB never select Job pods. */}}
{{- define "protembed.bulk.labels" -}}
helm.sh/chart: {{ include "protembed.chart" . }}
app.kubernetes.io/name: {{ include "protembed.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: bulk
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: protembed
{{- end }}

{{- define "protembed.bulk.validate" -}}
{{- $job := .Values.bulkJob }}
{{- if not $job.volume.existingClaim }}
{{- fail "bulkJob.enabled needs bulkJob.volume.existingClaim: the PersistentVolumeClaim holding the input and the shard files" }}
{{- end }}
{{- if and (eq $job.source "service") (not (include "protembed.grpcEnabled" .)) }}
{{- fail "bulkJob.source=service needs gRPC served: settings.grpc_port must be > 0" }}
{{- end }}
{{- if gt (int64 $job.parallelism) (int64 $job.shards) }}
{{- fail "bulkJob.parallelism must not exceed bulkJob.shards (one pod per shard)" }}
{{- end }}
{{- end }}

{{/*
The shard command, run by /bin/sh so that JOB_COMPLETION_INDEX (set by Kubernetes in every pod of an
Indexed Job) picks the shard, and so that exit status 3 (finished; bad records skipped and listed in the
log) completes the shard instead of retrying it forever. Paths and flags are single-quoted (the values
schema refuses a single quote in them).
*/}}
{{- define "protembed.bulk.script" -}}
{{- $job := .Values.bulkJob }}
{{- $shards := int64 $job.shards }}
{{- $root := trimSuffix "/" $job.volume.mountPath }}
{{- $index := "\"${JOB_COMPLETION_INDEX}\"" }}
{{- $out := printf "%s%s%s" (squote (printf "%s/%s/shard-" $root (trimSuffix "/" $job.outputDir))) $index (squote (printf "-of-%d%s" $shards $job.outputSuffix)) }}
{{- $args := list "protembed" "embed" (squote (printf "%s/%s" $root $job.input)) "--out" $out "--shard" (printf "%s/%d" $index $shards) "--no-progress" }}
{{- if eq $job.source "service" }}
{{- $args = append $args (printf "--server %s" (squote (printf "grpc://%s:%d" (include "protembed.fullname" .) (int64 .Values.service.grpcPort)))) }}
{{- end }}
{{- range $job.extraArgs }}
{{- $args = append $args (squote .) }}
{{- end }}
{{- printf "%s || [ $? -eq 3 ]" (join " " $args) }}
{{- end }}
