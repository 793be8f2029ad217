{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "protembed.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart>, or the release name alone when it already contains the
chart name. Truncated to 63 characters (DNS label).
*/}}
{{- define "protembed.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "protembed.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "protembed.selectorLabels" -}}
app.kubernetes.io/name: {{ include "protembed.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "protembed.labels" -}}
helm.sh/chart: {{ include "protembed.chart" . }}
{{ include "protembed.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: protembed
{{- end }}

{{- define "protembed.redis.fullname" -}}
{{- printf "%s-redis" (include "protembed.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "protembed.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "protembed.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cache
{{- end }}

{{- define "protembed.redis.labels" -}}
helm.sh/chart: {{ include "protembed.chart" . }}
{{ include "protembed.redis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.redis.bundled.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: protembed
{{- end }}

{{- define "protembed.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "protembed.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Server image: the GPU build (docker/Dockerfile.gpu) is tagged "<tag>-gpu" unless overridden. */}}
{{- define "protembed.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.gpu.enabled }}
{{- $repository := default .Values.image.repository .Values.gpu.image.repository }}
{{- printf "%s:%s" $repository (default (printf "%s-gpu" $tag) .Values.gpu.image.tag) }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
One settings value as an environment variable string. Helm reads YAML numbers as float64, which
`toString` would print as 1.6777216e+07 for 16 MiB and the server would refuse as an int; whole
numbers are printed as integers. Lists (providers) become the comma-separated form Settings parses.
*/}}
{{- define "protembed.envValue" -}}
{{- if kindIs "slice" . }}
{{- join "," . }}
{{- else if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* ONNX Runtime providers: the explicit setting, else CUDA-then-CPU on GPU pods and CPU elsewhere. */}}
{{- define "protembed.providers" -}}
{{- if not (kindIs "invalid" .Values.settings.providers) }}
{{- include "protembed.envValue" .Values.settings.providers }}
{{- else if .Values.gpu.enabled }}
{{- "CUDAExecutionProvider,CPUExecutionProvider" }}
{{- else }}
{{- "CPUExecutionProvider" }}
{{- end }}
{{- end }}

{{/* Whole-number value of a settings port (float64 from YAML) as an int. */}}
{{- define "protembed.httpPort" -}}
{{- int64 .Values.settings.port }}
{{- end }}

{{- define "protembed.grpcPort" -}}
{{- int64 (default 0 .Values.settings.grpc_port) }}
{{- end }}

{{- define "protembed.grpcEnabled" -}}
{{- if gt (int64 (default 0 .Values.settings.grpc_port)) 0 }}true{{ end }}
{{- end }}

{{/* Name of the Secret the chart creates for apiKey.value / redis.external.url (when either is set). */}}
{{- define "protembed.secretName" -}}
{{- include "protembed.fullname" . }}
{{- end }}

{{- define "protembed.createSecret" -}}
{{- if or (and .Values.apiKey.value (not .Values.apiKey.existingSecret)) (and (eq .Values.redis.mode "external") .Values.redis.external.url (not .Values.redis.external.existingSecret)) }}true{{ end }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express; each failure names the value to fix. */}}
{{- define "protembed.validate" -}}
{{- if and (eq .Values.redis.mode "external") (not .Values.redis.external.existingSecret) (not .Values.redis.external.url) }}
{{- fail "redis.mode=external needs redis.external.existingSecret or redis.external.url" }}
{{- end }}
{{- if and .Values.apiKey.existingSecret .Values.apiKey.value }}
{{- fail "apiKey: set either existingSecret or value, not both" }}
{{- end }}
{{- if and .Values.probes.grpc.enabled (not (include "protembed.grpcEnabled" .)) }}
{{- fail "probes.grpc.enabled needs gRPC served: settings.grpc_port must be > 0" }}
{{- end }}
{{- if ge (int64 .Values.preStopSleepSeconds) (int64 .Values.terminationGracePeriodSeconds) }}
{{- fail "preStopSleepSeconds must be shorter than terminationGracePeriodSeconds (the drain needs the rest)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.customMetric.enabled) }}
{{- fail "autoscaling.enabled needs a metric: targetCPUUtilizationPercentage or customMetric.enabled" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int64 .Values.autoscaling.minReplicas) (int64 .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- end }}

{{/* The readiness check shared by the readiness and startup probes: HTTP /readyz or gRPC health. */}}
{{- define "protembed.readyCheck" -}}
{{- if .Values.probes.grpc.enabled }}
grpc:
  port: {{ include "protembed.grpcPort" . }}
  service: {{ .Values.probes.grpc.service | quote }}
{{- else }}
httpGet:
  path: /readyz
  port: http
{{- end }}
{{- end }}

{{/*
Service ports. appProtocol tells L7 load balancers and meshes what each port speaks: plain HTTP/1.1
on http, cleartext HTTP/2 (gRPC without TLS) on grpc - "kubernetes.io/h2c" is the standard value.
*/}}
{{- define "protembed.servicePorts" -}}
- name: http
  port: {{ .Values.service.httpPort }}
  targetPort: http
  protocol: TCP
  appProtocol: http
{{- if include "protembed.grpcEnabled" . }}
- name: grpc
  port: {{ .Values.service.grpcPort }}
  targetPort: grpc
  protocol: TCP
  appProtocol: kubernetes.io/h2c
{{- end }}
{{- end }}

{{/* Container env beyond the ConfigMap: secrets (API key, Redis URL), the bundled Redis URL, extraEnv. */}}
{{- define "protembed.env" -}}
{{- if or .Values.apiKey.existingSecret .Values.apiKey.value }}
- name: PROTEMBED_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default (include "protembed.secretName" .) .Values.apiKey.existingSecret }}
      key: {{ .Values.apiKey.existingSecretKey }}
{{- end }}
{{- if eq .Values.redis.mode "external" }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "protembed.secretName" .) .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else if eq .Values.redis.mode "bundled" }}
- name: REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "protembed.redis.fullname" .) | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
