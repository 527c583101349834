{{/* Names and labels, as `helm create` makes them. */}}
{{- define "fastgw.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fastgw.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "fastgw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fastgw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The gateway's pods (the chart's Redis pods share name and instance, not the component). */}}
{{- define "fastgw.gatewaySelectorLabels" -}}
{{ include "fastgw.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "fastgw.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fastgw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fastgw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fastgw.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fastgw.adminSecretName" -}}
{{- default (printf "%s-admin" (include "fastgw.fullname" .)) .Values.admin.existingSecret }}
{{- end }}

{{/* host:port of the Redis for shared rate-limit counters; empty without one. */}}
{{- define "fastgw.redisAddress" -}}
{{- if and .Values.redis.enabled .Values.redis.address }}
{{- fail "redis: set redis.address (an existing Redis) or redis.enabled (the chart's), not both" }}
{{- end }}
{{- if .Values.redis.address }}
{{- .Values.redis.address }}
{{- else if .Values.redis.enabled }}
{{- printf "%s-redis:6379" (include "fastgw.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the pod mounts things; the config below names them. */}}
{{- define "fastgw.configDir" -}}/etc/fastgw{{- end }}
{{- define "fastgw.adminTokenDir" -}}/var/run/secrets/fastgw/admin{{- end }}

{{- define "fastgw.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.shutdown.terminationGracePeriodSeconds }}
{{- add .Values.shutdown.shutdownDelaySeconds .Values.shutdown.drainTimeoutSeconds 5 }}
{{- else }}
{{- .Values.shutdown.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The config file the chart writes beside config.files: every gateway setting the chart depends on is
named here and nowhere else (the listener the Service targets, the Admin API the probes use, the
shutdown timing terminationGracePeriodSeconds is computed from, the Redis of shared rate limits).
*/}}
{{- define "fastgw.chartConfig" -}}
{{- $server := merge (dict "shutdown_delay" (printf "%ds" (int .Values.shutdown.shutdownDelaySeconds)) "drain_timeout" (printf "%ds" (int .Values.shutdown.drainTimeoutSeconds))) (deepCopy .Values.config.server) -}}
{{- $cfg := dict "admin" (dict "address" (printf "0.0.0.0:%d" (int .Values.containerPorts.admin)) "token_file" (printf "%s/%s" (include "fastgw.adminTokenDir" .) .Values.admin.secretKey)) "server" $server -}}
{{- if .Values.config.listener.enabled }}
{{- $_ := set $cfg "listeners" (list (dict "address" (printf "0.0.0.0:%d" (int .Values.containerPorts.http)))) }}
{{- end }}
{{- $redis := include "fastgw.redisAddress" . }}
{{- if $redis }}
{{- $_ := set $cfg "redis" (dict "url" (ternary $redis (printf "redis://%s" $redis) (contains "://" $redis))) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
